# Sourced on a GPU machine (bash): unpacks .devshared/ompi.tar.xz (scripts/gpu_stage_mpi.sh)
# into /opt/rwkvpp-ompi and points PATH, LD_LIBRARY_PATH, OPAL_PREFIX and PMIX_PREFIX
# at it, so that `mpirun` launches the carried rwkvpp on several local GPUs.
R=/opt/rwkvpp-ompi
if [ ! -x $R/usr/bin/orterun ]; then
  mkdir -p $R && xz -dc "${RWKVPP_DEVSHARED:-$PWD/.devshared}/ompi.tar.xz" | tar -C $R -xf -
fi
export OPAL_PREFIX=$R/usr
export PMIX_PREFIX=$R/usr/lib/x86_64-linux-gnu/pmix2 PMIX_EXEC_PREFIX=$R/usr/lib/x86_64-linux-gnu/pmix2
export PATH=$R/usr/bin:$PATH
export LD_LIBRARY_PATH=$R/usr/lib/x86_64-linux-gnu/openmpi/lib:$R/usr/lib/x86_64-linux-gnu/pmix2/lib:$R/lib:${LD_LIBRARY_PATH:-}
export OMPI_MCA_mca_base_param_files=$R/etc/openmpi/openmpi-mca-params.conf
export PMIX_MCA_mca_base_param_files=$R/usr/lib/x86_64-linux-gnu/pmix2/share/pmix-mca-params.conf
# This PMIx looks for its plugins under its configured prefix; where the image has a PMIx of
# its own there (another version), point it at the carried ones instead.
export PMIX_MCA_mca_base_component_path=$R/usr/lib/x86_64-linux-gnu/pmix2/lib/pmix
export PMIX_MCA_pcompress_base_silence_warning=1

// Reading launcher variables (Open MPI's, Slurm's, our own RWKVPP_RANK) from the environment.
#pragma once

#include <initializer_list>

namespace rwkvpp {

// The integer value of the first of `names` that is set and not empty (atoi: 0 when it is
// not a number), else `dflt`.
int env_int(std::initializer_list<const char*> names, int dflt);

}  // namespace rwkvpp

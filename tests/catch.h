// Includes Catch2 whichever major version the distribution ships (2.13 on Debian 12,
// 3.x on Ubuntu 24.04).
#pragma once
#ifdef RWKVPP_CATCH3
#include <catch2/catch_approx.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#else
#include <catch2/catch.hpp>
#endif

#![no_std]
// This file exists to enable the library target (needed for the build-dependency in lqtrace).

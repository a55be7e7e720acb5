// Emulator stand-in for CUDA's <cuda_runtime.h> (see emu.h).
#pragma once
#include "emu.h"

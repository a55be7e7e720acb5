// Emulator stand-in for CUDA's <cuda_runtime_api.h> (see emu.h).
#pragma once
#include "emu.h"

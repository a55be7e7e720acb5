// Emulator stand-in for CUDA's <cuda_bf16.h> (see emu.h).
#pragma once
#include "emu.h"

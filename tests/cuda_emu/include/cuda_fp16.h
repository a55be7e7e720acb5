// Emulator stand-in for CUDA's <cuda_fp16.h> (see emu.h).
#pragma once
#include "emu.h"

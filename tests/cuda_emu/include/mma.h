// Emulator stand-in for CUDA's <mma.h> (see emu.h).
#pragma once
#include "emu.h"

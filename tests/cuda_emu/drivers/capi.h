// The emulator's controls for ctypes, included once by every driver.
#pragma once

#include <string>

#include "emu.h"

extern "C" const char* emu_failure() {
  static std::string msg;
  msg = emu::last_failure();
  if (msg.empty() && emu::state().last_error != cudaSuccess) msg = "cudaGetLastError() is set";
  return msg.c_str();
}
extern "C" void emu_reset() { emu::reset(); }
// The order in which the scheduler resumes a block's threads (a seed for its shuffles).
extern "C" void emu_set_seed(unsigned long long seed) { emu::state().seed = seed | 1; }

// ctypes entry points over selftest.cu's launchers.
#include "capi.h"

void launch_reverse(const float* in, float* out, int blocks, bool sync);
void launch_warp_sum(const float* in, float* out, int active);
void launch_deadlock(float* out);
void launch_too_many_threads(float* out);
void launch_shared_overrun(float* out, int offset);
void launch_first_block_fills(float* out, int blocks);
void launch_sum_all(float* out, bool atomic);
void launch_vector_load(const float* in, float* out, int offset);

extern "C" {
void st_reverse(const float* in, float* out, int blocks, int sync) { launch_reverse(in, out, blocks, sync != 0); }
void st_warp_sum(const float* in, float* out, int active) { launch_warp_sum(in, out, active); }
void st_deadlock(float* out) { launch_deadlock(out); }
void st_too_many_threads(float* out) { launch_too_many_threads(out); }
void st_shared_overrun(float* out, int offset) { launch_shared_overrun(out, offset); }
void st_vector_load(const float* in, float* out, int offset) { launch_vector_load(in, out, offset); }
void st_first_block_fills(float* out, int blocks) { launch_first_block_fills(out, blocks); }
void st_sum_all(float* out, int atomic) { launch_sum_all(out, atomic != 0); }
int st_last_error() { return static_cast<int>(cudaGetLastError()); }
}

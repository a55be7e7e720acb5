// Dynamic work sharing on top of at::parallel_for, for CPU kernels whose units cost about the same.
#pragma once

#include <ATen/Parallel.h>

#include <atomic>
#include <cstdint>

namespace weightkit {

// Runs f(u) for u in [0, n) on at::parallel_for's threads, each thread taking the next unit from a
// shared counter until none is left: on a shared machine a descheduled thread then delays only
// the unit it holds, not a fixed half of the work (with static halves, a 4096 x 4096 trit-plane
// GEMV on 2 threads took 16 ms instead of ~0.7 ms while another process kept both cores busy).
template <class F>
void parallel_units(int64_t n, F&& f) {
  std::atomic<int64_t> next{0};
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) {
    for (int64_t u = next.fetch_add(1, std::memory_order_relaxed); u < n;
         u = next.fetch_add(1, std::memory_order_relaxed))
      f(u);
  });
}

}  // namespace weightkit

#include "threads.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>

namespace dcnv2_mx {
namespace cpu {

namespace {

int thread_count = 1;

// A positive integer from the environment, or 0.
int env_count(const char* name) {
  const char* value = std::getenv(name);
  return value ? std::max(std::atoi(value), 0) : 0;
}

}  // namespace

void init_threads() {
  // MXNet itself sets the OpenMP default of its threads to 1 when OMP_NUM_THREADS is unset, so
  // the environment is read directly, like MXNet's engine::OpenMP does.
  int count = env_count("OMP_NUM_THREADS");
  if (count == 0) count = omp_get_num_procs();
  const int cap = env_count("MXNET_OMP_MAX_THREADS");
  if (cap > 0) count = std::min(count, cap);
  thread_count = std::max(count, 1);
}

int threads() { return thread_count; }

}  // namespace cpu
}  // namespace dcnv2_mx

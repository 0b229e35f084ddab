// Emulated CUDA (tests/gpu/cuda_emulation): __half is defined by the emulator.
#include "../cuda_emulation.h"

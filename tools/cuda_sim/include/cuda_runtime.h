// stand-in for the CUDA header: the emulator's built-ins (sim_cuda.h)
#pragma once
#include "../sim_cuda.h"

// emu_runtime.cpp -- the execution model behind emu.h: blocks, fibers, barriers, shuffles.
//
// A launch runs the grid's blocks one after another on the calling OS thread. Each block gets
// blockDim.x*y*z fibers (ucontext, one small mmap'ed stack each with a guard page below it) and
// a scheduler that sweeps the fibers in "order" (0: thread 0,1,2,...; 1: reverse, with the blocks
// also in reverse), running each until it blocks on a barrier or returns. A sweep in which no
// fiber could run while some have not returned is a deadlock; it and every divergence are
// reported as an error string (the launch returns non-zero and the Python loader raises).
//
// Shared memory starts as garbage: before every block the library's whole thread-local (TLS)
// segment -- which holds exactly the static __shared__ variables of the kernel translation unit
// and the extern __shared__ buffers, nothing else -- is filled with 0xFF bytes (NaN as float,
// -1 as int), so a kernel that reads shared memory before writing it (or relies on what the
// previous block left there) computes garbage under test instead of passing by luck.
//
// With -fsanitize=address the fiber switches are announced to ASan
// (__sanitizer_start/finish_switch_fiber), so it follows the stacks, and the part of the
// dynamic shared memory buffer beyond the launch's shared_mem is poisoned: reading past it is
// reported like any heap overflow.
#include <ucontext.h>
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <cstdarg>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#else
#define EMU_ASAN 0
#endif

// Fiber switching. On x86-64 (without ASan) a 12-instruction stack switch saves the callee-saved
// registers on the old stack and restores them from the new one: no system call, unlike
// glibc's swapcontext, which saves and restores the signal mask each time (a syscall, most of the
// emulation's time). Elsewhere, under ASan, or with -DMINIDL_EMU_UCONTEXT: ucontext.
#if defined(__x86_64__) && !EMU_ASAN && !defined(MINIDL_EMU_UCONTEXT)
#define EMU_FAST_SWITCH 1
extern "C" void __emu_switch_stack(void** save_sp, void* new_sp);
asm(".text\n"
    ".globl __emu_switch_stack\n"
    ".hidden __emu_switch_stack\n"
    ".type __emu_switch_stack, @function\n"
    "__emu_switch_stack:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"  // *save_sp = rsp
    "  movq %rsi, %rsp\n"    // rsp = new_sp
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"                // into the new stack's saved return address
    ".size __emu_switch_stack, .-__emu_switch_stack\n");
#else
#define EMU_FAST_SWITCH 0
#endif

struct uint3 { unsigned x, y, z; };
struct dim3 { unsigned x, y, z; };

extern "C" {
uint3 __emu_threadIdx;
uint3 __emu_blockIdx;
dim3 __emu_blockDim;
dim3 __emu_gridDim;
}

namespace {

enum State { READY, BLOCK_WAIT, WARP_WAIT, DONE };

struct Fiber {
#if EMU_FAST_SWITCH
  void* sp = nullptr;  // saved stack pointer while switched out
#else
  ucontext_t ctx;
#endif
  char* stack = nullptr;  // usable part (above the guard page)
  size_t stack_size = 0;
  uint3 tid{0, 0, 0};
  int linear = 0;
  State state = READY;
  const char* wait_file = nullptr;  // where it waits (for messages)
  int wait_line = 0;
  unsigned shfl_gen = 0;  // number of warp exchanges this lane has done (buffer parity)
#if EMU_ASAN
  void* fake_stack = nullptr;
#endif
};

struct Warp {
  int arrived = 0;
  int lanes = 32;
  int mode = -1, width = 32;
  const char* file = nullptr;
  int line = 0;
  long long slot[2][32];
};

typedef void (*Body)(void**);

constexpr size_t kStack = EMU_ASAN ? (256u << 10) : (64u << 10);
size_t g_page = 4096;

std::vector<Fiber> g_fibers;
std::vector<Warp> g_warps;
#if EMU_FAST_SWITCH
void* g_sched_sp = nullptr;
#else
ucontext_t g_sched;
ucontext_t g_template;
#endif
#if EMU_ASAN
void* g_sched_fake = nullptr;
const void* g_sched_bottom = nullptr;
size_t g_sched_size = 0;
#endif
Fiber* g_cur = nullptr;
Body g_body = nullptr;
void** g_args = nullptr;
int g_nthreads = 0;
int g_block_arrived = 0;
int g_done = 0;
const char* g_block_file = nullptr;
int g_block_line = 0;
char g_error[2048];
bool g_failed = false;

void set_error(const char* fmt, ...) {
  if (g_failed) return;
  g_failed = true;
  va_list ap;
  va_start(ap, fmt);
  int n = snprintf(g_error, sizeof g_error, "block (%u,%u,%u): ", __emu_blockIdx.x,
                   __emu_blockIdx.y, __emu_blockIdx.z);
  vsnprintf(g_error + n, sizeof g_error - n, fmt, ap);
  va_end(ap);
}

// Switch from the running fiber back to the scheduler.
void yield_to_scheduler(bool dying) {
  Fiber* f = g_cur;
#if EMU_ASAN
  __sanitizer_start_switch_fiber(dying ? nullptr : &f->fake_stack, g_sched_bottom, g_sched_size);
#else
  (void)dying;
#endif
#if EMU_FAST_SWITCH
  __emu_switch_stack(&f->sp, g_sched_sp);
#else
  swapcontext(&f->ctx, &g_sched);
#endif
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(f->fake_stack, nullptr, nullptr);
#endif
  __emu_threadIdx = f->tid;  // back on this fiber: its threadIdx again
}

void fiber_entry() {
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g_sched_bottom, &g_sched_size);
#endif
  Fiber* f = g_cur;
  g_body(g_args);
  f->state = DONE;
  ++g_done;
  if (g_block_arrived > 0)
    set_error("thread (%u,%u,%u) returned while %d thread(s) wait at __syncthreads() at %s:%d "
              "(divergent barrier: every thread must reach it)",
              f->tid.x, f->tid.y, f->tid.z, g_block_arrived, g_block_file, g_block_line);
  int w = f->linear / 32;
  if (!g_failed && g_warps[w].arrived > 0)
    set_error("thread (%u,%u,%u) returned while %d lane(s) of its warp wait at a warp "
              "shuffle/__syncwarp at %s:%d", f->tid.x, f->tid.y, f->tid.z, g_warps[w].arrived,
              g_warps[w].file, g_warps[w].line);
  yield_to_scheduler(true);
  __builtin_unreachable();
}

// The calling thread's copy of this library's PT_TLS segment (found via dl_iterate_phdr).
char* g_tls_base = nullptr;
size_t g_tls_size = 0;

int find_tls(struct dl_phdr_info* info, size_t, void* data) {
  const ElfW(Addr) addr = (ElfW(Addr))data;
  bool mine = false;
  const ElfW(Phdr)* tls = nullptr;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type == PT_LOAD && addr >= info->dlpi_addr + ph.p_vaddr &&
        addr < info->dlpi_addr + ph.p_vaddr + ph.p_memsz)
      mine = true;
    if (ph.p_type == PT_TLS) tls = &ph;
  }
  if (!mine) return 0;
  if (tls && info->dlpi_tls_data) {
    g_tls_base = (char*)info->dlpi_tls_data;
    g_tls_size = tls->p_memsz;
  }
  return 1;
}

bool ensure_stacks(int n) {
  while ((int)g_fibers.size() < n) g_fibers.emplace_back();
  for (int i = 0; i < n; ++i) {
    Fiber& f = g_fibers[i];
    if (f.stack) continue;
    size_t total = kStack + g_page;
    void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return false;
    mprotect(p, g_page, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting
    f.stack = (char*)p + g_page;
    f.stack_size = kStack;
  }
  return true;
}

}  // namespace

extern "C" {

const char* __emu_last_error() { return g_error; }

void __emu_trap(const char* file, int line) {
  set_error("thread (%u,%u,%u) executed __trap() at %s:%d", g_cur->tid.x, g_cur->tid.y,
            g_cur->tid.z, file, line);
  yield_to_scheduler(false);
}

void __emu_syncthreads(const char* file, int line) {
  Fiber* f = g_cur;
  if (g_done > 0) {
    set_error("thread (%u,%u,%u) reached __syncthreads() at %s:%d after %d thread(s) of the "
              "block had returned (divergent barrier: every thread must reach it)",
              f->tid.x, f->tid.y, f->tid.z, file, line, g_done);
  } else if (g_block_arrived > 0 && (line != g_block_line || strcmp(file, g_block_file) != 0)) {
    set_error("thread (%u,%u,%u) reached __syncthreads() at %s:%d while %d thread(s) wait at "
              "the one at %s:%d (divergent barrier)", f->tid.x, f->tid.y, f->tid.z, file, line,
              g_block_arrived, g_block_file, g_block_line);
  }
  if (g_failed) { yield_to_scheduler(false); return; }
  g_block_file = file;
  g_block_line = line;
  f->state = BLOCK_WAIT;
  f->wait_file = file;
  f->wait_line = line;
  if (++g_block_arrived == g_nthreads) {  // the last one releases the block
    for (int i = 0; i < g_nthreads; ++i) g_fibers[i].state = READY;
    g_block_arrived = 0;
  }
  yield_to_scheduler(false);
}

// Warp-level rendezvous shared by __syncwarp and the shuffles. Every lane deposits 8 bytes in
// the buffer of its exchange's parity, waits until all 32 lanes have, and reads its source.
static void warp_exchange(long long* value, int mode, int arg, int width, unsigned mask,
                          const char* file, int line) {
  Fiber* f = g_cur;
  if (mask != 0xffffffffu) {
    set_error("thread (%u,%u,%u): warp operation at %s:%d with mask 0x%x; minidl kernels use "
              "the full mask 0xffffffff", f->tid.x, f->tid.y, f->tid.z, file, line, mask);
    yield_to_scheduler(false);
    return;
  }
  if (width <= 0 || width > 32 || (width & (width - 1))) {
    set_error("warp shuffle at %s:%d with width %d (must be a power of two <= 32)", file, line,
              width);
    yield_to_scheduler(false);
    return;
  }
  int w = f->linear / 32, lane = f->linear % 32;
  Warp& wp = g_warps[w];
  if (wp.arrived > 0 && (wp.line != line || wp.mode != mode || strcmp(wp.file, file) != 0)) {
    set_error("lane %d of warp %d reached a warp operation at %s:%d while lanes wait at %s:%d "
              "(divergent warp operation)", lane, w, file, line, wp.file, wp.line);
    yield_to_scheduler(false);
    return;
  }
  for (int i = 0; i < 32; ++i) {
    const Fiber& o = g_fibers[w * 32 + i];
    if (o.state == DONE) {
      set_error("lane %d of warp %d reached a warp operation at %s:%d but lane %d has returned",
                lane, w, file, line, i);
      yield_to_scheduler(false);
      return;
    }
  }
  int par = f->shfl_gen & 1;
  wp.slot[par][lane] = *value;
  wp.mode = mode;
  wp.file = file;
  wp.line = line;
  wp.width = width;
  f->state = WARP_WAIT;
  f->wait_file = file;
  f->wait_line = line;
  if (++wp.arrived == 32) {
    for (int i = 0; i < 32; ++i) g_fibers[w * 32 + i].state = READY;
    wp.arrived = 0;
  }
  yield_to_scheduler(false);
  if (g_failed) return;
  ++f->shfl_gen;
  int seg = lane & ~(width - 1), rel = lane - seg, src = lane;
  switch (mode) {
    case 0: src = seg + (arg & (width - 1)); break;                   // idx
    case 1: src = rel >= arg ? lane - arg : lane; break;              // up
    case 2: src = rel + arg < width ? lane + arg : lane; break;       // down
    case 3: src = ((lane ^ arg) & ~(width - 1)) == seg ? (lane ^ arg) : lane; break;  // xor
    default: src = lane;  // __syncwarp: no data
  }
  *value = wp.slot[par][src];
}

void __emu_shfl(void* value, int nbytes, int mode, int arg, int width, unsigned mask,
                const char* file, int line) {
  long long v = 0;
  memcpy(&v, value, nbytes);
  warp_exchange(&v, mode, arg, width, mask, file, line);
  memcpy(value, &v, nbytes);
}

void __emu_syncwarp(unsigned mask, const char* file, int line) {
  long long v = 0;
  warp_exchange(&v, 4, 0, 32, mask, file, line);
}

// Run one kernel over the whole grid. dyn_shared: the module's extern __shared__ buffers (all of
// size dyn_capacity), filled with 0xFF before each block. Returns 0 or -1 (see __emu_last_error).
int __emu_launch(Body body, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                 unsigned bz, unsigned shared_mem, void** args, int order, void** dyn_shared,
                 int n_dyn_shared, unsigned dyn_capacity) {
  g_error[0] = 0;
  g_failed = false;
  g_page = (size_t)sysconf(_SC_PAGESIZE);
  unsigned long long nthreads = (unsigned long long)bx * by * bz;
  if (gx == 0 || gy == 0 || gz == 0 || nthreads == 0) {
    set_error("empty launch: grid (%u,%u,%u) block (%u,%u,%u)", gx, gy, gz, bx, by, bz);
    return -1;
  }
  if (nthreads > 1024 || bz > 64) {
    set_error("block (%u,%u,%u) has %llu threads; CUDA allows at most 1024 (and z <= 64)",
              bx, by, bz, nthreads);
    return -1;
  }
  if (nthreads % 32 != 0) {
    set_error("block (%u,%u,%u) has %llu threads, not a multiple of the warp size 32 (a rule "
              "of minidl kernels, docs/design.md)", bx, by, bz, nthreads);
    return -1;
  }
  if (gy > 65535 || gz > 65535 || gx > 0x7fffffffu) {
    set_error("grid (%u,%u,%u) exceeds CUDA's limits (x < 2^31, y and z <= 65535)", gx, gy, gz);
    return -1;
  }
  if (shared_mem > dyn_capacity) {
    set_error("shared_mem=%u bytes exceeds the 48 KiB CUDA allows without opt-in", shared_mem);
    return -1;
  }
  if (shared_mem > 0 && n_dyn_shared == 0) {
    set_error("shared_mem=%u but the kernel's module declares no extern __shared__ array",
              shared_mem);
    return -1;
  }
  if (!ensure_stacks((int)nthreads)) {
    set_error("could not allocate fiber stacks");
    return -1;
  }
#if !EMU_FAST_SWITCH
  getcontext(&g_template);
#endif
  g_nthreads = (int)nthreads;
  g_warps.assign(nthreads / 32, Warp());
  g_body = body;
  g_args = args;
  __emu_gridDim = dim3{gx, gy, gz};
  __emu_blockDim = dim3{bx, by, bz};
  unsigned long long nblocks = (unsigned long long)gx * gy * gz;
  g_tls_base = nullptr;
  g_tls_size = 0;
  dl_iterate_phdr(find_tls, (void*)&__emu_launch);  // TLS is per thread: look up every launch
  for (unsigned long long bi = 0; bi < nblocks && !g_failed; ++bi) {
    unsigned long long b = order ? nblocks - 1 - bi : bi;
    __emu_blockIdx = uint3{(unsigned)(b % gx), (unsigned)((b / gx) % gy), (unsigned)(b / gx / gy)};
#if EMU_ASAN
    for (int s = 0; s < n_dyn_shared; ++s) __asan_unpoison_memory_region(dyn_shared[s], dyn_capacity);
#endif
    if (g_tls_base) memset(g_tls_base, 0xff, g_tls_size);  // all shared memory: garbage
    for (int s = 0; s < n_dyn_shared; ++s) {
      if (!g_tls_base) memset(dyn_shared[s], 0xff, dyn_capacity);
#if EMU_ASAN
      __asan_poison_memory_region((char*)dyn_shared[s] + shared_mem, dyn_capacity - shared_mem);
#endif
    }
    g_block_arrived = 0;
    g_done = 0;
    for (int i = 0; i < g_nthreads; ++i) {
      Fiber& f = g_fibers[i];
      f.linear = i;
      f.tid = uint3{(unsigned)(i % bx), (unsigned)((i / bx) % by), (unsigned)(i / bx / by)};
      f.state = READY;
      f.shfl_gen = 0;
#if EMU_FAST_SWITCH
      {  // a stack that __emu_switch_stack "returns" into fiber_entry from, as if called
        void** top = (void**)(((unsigned long)(f.stack + f.stack_size)) & ~15ul);
        *--top = nullptr;                    // fiber_entry's own return address (never used)
        *--top = (void*)&fiber_entry;        // popped by ret
        for (int r = 0; r < 6; ++r) *--top = nullptr;  // rbp rbx r12..r15
        f.sp = top;
      }
#else
      f.ctx = g_template;  // (getcontext once per launch, not per fiber: it is a system call)
      f.ctx.uc_stack.ss_sp = f.stack;
      f.ctx.uc_stack.ss_size = f.stack_size;
      f.ctx.uc_link = nullptr;
#if EMU_ASAN
      __asan_unpoison_memory_region(f.stack, f.stack_size);
      f.fake_stack = nullptr;
#endif
      makecontext(&f.ctx, fiber_entry, 0);
#endif
    }
    while (g_done < g_nthreads && !g_failed) {
      bool ran = false;
      for (int k = 0; k < g_nthreads && !g_failed; ++k) {
        Fiber& f = g_fibers[order ? g_nthreads - 1 - k : k];
        if (f.state != READY) continue;
        ran = true;
        g_cur = &f;
        __emu_threadIdx = f.tid;
#if EMU_ASAN
        __sanitizer_start_switch_fiber(&g_sched_fake, f.stack, f.stack_size);
#endif
#if EMU_FAST_SWITCH
        __emu_switch_stack(&g_sched_sp, f.sp);
#else
        swapcontext(&g_sched, &f.ctx);
#endif
#if EMU_ASAN
        __sanitizer_finish_switch_fiber(g_sched_fake, nullptr, nullptr);
#endif
      }
      if (!ran && !g_failed) {
        int nb = 0, nw = 0, first_b = -1, first_w = -1;
        for (int i = 0; i < g_nthreads; ++i) {
          if (g_fibers[i].state == BLOCK_WAIT) { ++nb; if (first_b < 0) first_b = i; }
          if (g_fibers[i].state == WARP_WAIT) { ++nw; if (first_w < 0) first_w = i; }
        }
        set_error("deadlock: %d thread(s) wait at __syncthreads() (first: thread %d at %s:%d) "
                  "and %d at warp operations (first: thread %d at %s:%d); %d returned", nb,
                  first_b, first_b >= 0 ? g_fibers[first_b].wait_file : "-",
                  first_b >= 0 ? g_fibers[first_b].wait_line : 0, nw, first_w,
                  first_w >= 0 ? g_fibers[first_w].wait_file : "-",
                  first_w >= 0 ? g_fibers[first_w].wait_line : 0, g_done);
      }
    }
  }
#if EMU_ASAN
  for (int s = 0; s < n_dyn_shared; ++s) __asan_unpoison_memory_region(dyn_shared[s], dyn_capacity);
#endif
  g_cur = nullptr;
  return g_failed ? -1 : 0;
}

}  // extern "C"

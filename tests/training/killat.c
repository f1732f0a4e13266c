/* Fault injection for the crash-consistency tests (tests/training/test_crash_consistency.py).

   Loaded with LD_PRELOAD into a real training process, it counts the file-system writes
   that change what a later process finds under TRIPLETLAB_TEST_KILL_DIR (the run folder):
   opening a file for writing (open, openat, creat, fopen with "w", "a" or "+"), rename,
   unlink, fsync and fdatasync. It sits between the process and libc, so it sees Python's
   os.replace and open() and TensorFlow's C++ checkpoint and event writers alike: the real
   code paths, nothing mocked. Before the TRIPLETLAB_TEST_KILL_AT-th of them (1-based) it
   sends itself SIGKILL, as kill -9 would. TRIPLETLAB_TEST_TRACE=FILE appends
   "<n> <call> <path>" per counted call.

   cc -shared -fPIC -O2 -o killat.so killat.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

static const char *watched;
static size_t watched_len;
static long kill_at;
static long counted;
static int trace_fd = -1;
static int ready;

__attribute__((constructor)) static void start(void) {
  watched = getenv("TRIPLETLAB_TEST_KILL_DIR");
  if (watched == NULL || watched[0] != '/') return;
  watched_len = strlen(watched);
  const char *k = getenv("TRIPLETLAB_TEST_KILL_AT");
  kill_at = k ? atol(k) : 0;
  const char *trace = getenv("TRIPLETLAB_TEST_TRACE");
  if (trace != NULL)
    trace_fd = (int)syscall(SYS_openat, AT_FDCWD, trace,
                            O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  ready = 1;
}

static int under_watched(const char *full) {
  return strncmp(full, watched, watched_len) == 0 &&
         (full[watched_len] == '/' || full[watched_len] == '\0');
}

/* The absolute form of path (relative to dirfd), in buf. */
static const char *absolute(int dirfd, const char *path, char *buf, size_t size) {
  if (path == NULL) return "";
  if (path[0] == '/') return path;
  char base[PATH_MAX];
  if (dirfd == AT_FDCWD) {
    if (getcwd(base, sizeof base) == NULL) return path;
  } else {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
    ssize_t n = readlink(link, base, sizeof base - 1);
    if (n < 0) return path;
    base[n] = '\0';
  }
  snprintf(buf, size, "%s/%s", base, path);
  return buf;
}

static void point(const char *call, const char *full) {
  long n = __atomic_add_fetch(&counted, 1, __ATOMIC_SEQ_CST);
  if (trace_fd >= 0) {
    char line[PATH_MAX + 64];
    int len = snprintf(line, sizeof line, "%ld %s %s\n", n, call, full);
    if (len > 0) (void)!write(trace_fd, line, (size_t)len);
  }
  if (kill_at > 0 && n == kill_at) {
    kill(getpid(), SIGKILL);
    for (;;) pause();
  }
}

static void at_path(const char *call, int dirfd, const char *path) {
  if (!ready) return;
  char buf[2 * PATH_MAX];
  const char *full = absolute(dirfd, path, buf, sizeof buf);
  if (under_watched(full)) point(call, full);
}

static void at_fd(const char *call, int fd) {
  if (!ready) return;
  char link[64], full[PATH_MAX];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, full, sizeof full - 1);
  if (n < 0) return;
  full[n] = '\0';
  if (under_watched(full)) point(call, full);
}

static int writes(int flags) {
  return (flags & O_ACCMODE) != O_RDONLY || (flags & (O_CREAT | O_TRUNC)) != 0;
}

static int writes_mode(const char *mode) {
  return mode != NULL && strpbrk(mode, "wa+") != NULL;
}

#define REAL(name, type) \
  static type real_##name; \
  if (real_##name == NULL) real_##name = (type)dlsym(RTLD_NEXT, #name)

#define MODE_ARG(flags) \
  mode_t mode = 0; \
  if ((flags) & (O_CREAT | O_TMPFILE)) { \
    va_list ap; \
    va_start(ap, flags); \
    mode = (mode_t)va_arg(ap, int); \
    va_end(ap); \
  }

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef int (*open2_fn)(const char *, int);
typedef int (*openat2_fn)(int, const char *, int);
typedef int (*creat_fn)(const char *, mode_t);
typedef FILE *(*fopen_fn)(const char *, const char *);
typedef int (*rename_fn)(const char *, const char *);
typedef int (*renameat_fn)(int, const char *, int, const char *);
typedef int (*renameat2_fn)(int, const char *, int, const char *, unsigned int);
typedef int (*unlink_fn)(const char *);
typedef int (*unlinkat_fn)(int, const char *, int);
typedef int (*fd_fn)(int);

int open(const char *path, int flags, ...) {
  MODE_ARG(flags);
  REAL(open, open_fn);
  if (writes(flags)) at_path("open", AT_FDCWD, path);
  return real_open(path, flags, mode);
}

int open64(const char *path, int flags, ...) {
  MODE_ARG(flags);
  REAL(open64, open_fn);
  if (writes(flags)) at_path("open", AT_FDCWD, path);
  return real_open64(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...) {
  MODE_ARG(flags);
  REAL(openat, openat_fn);
  if (writes(flags)) at_path("open", dirfd, path);
  return real_openat(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...) {
  MODE_ARG(flags);
  REAL(openat64, openat_fn);
  if (writes(flags)) at_path("open", dirfd, path);
  return real_openat64(dirfd, path, flags, mode);
}

int __open_2(const char *path, int flags) {
  REAL(__open_2, open2_fn);
  if (writes(flags)) at_path("open", AT_FDCWD, path);
  return real___open_2(path, flags);
}

int __open64_2(const char *path, int flags) {
  REAL(__open64_2, open2_fn);
  if (writes(flags)) at_path("open", AT_FDCWD, path);
  return real___open64_2(path, flags);
}

int __openat_2(int dirfd, const char *path, int flags) {
  REAL(__openat_2, openat2_fn);
  if (writes(flags)) at_path("open", dirfd, path);
  return real___openat_2(dirfd, path, flags);
}

int __openat64_2(int dirfd, const char *path, int flags) {
  REAL(__openat64_2, openat2_fn);
  if (writes(flags)) at_path("open", dirfd, path);
  return real___openat64_2(dirfd, path, flags);
}

int creat(const char *path, mode_t mode) {
  REAL(creat, creat_fn);
  at_path("open", AT_FDCWD, path);
  return real_creat(path, mode);
}

int creat64(const char *path, mode_t mode) {
  REAL(creat64, creat_fn);
  at_path("open", AT_FDCWD, path);
  return real_creat64(path, mode);
}

FILE *fopen(const char *path, const char *mode) {
  REAL(fopen, fopen_fn);
  if (writes_mode(mode)) at_path("fopen", AT_FDCWD, path);
  return real_fopen(path, mode);
}

FILE *fopen64(const char *path, const char *mode) {
  REAL(fopen64, fopen_fn);
  if (writes_mode(mode)) at_path("fopen", AT_FDCWD, path);
  return real_fopen64(path, mode);
}

int rename(const char *from, const char *to) {
  REAL(rename, rename_fn);
  at_path("rename", AT_FDCWD, to);
  return real_rename(from, to);
}

int renameat(int fromfd, const char *from, int tofd, const char *to) {
  REAL(renameat, renameat_fn);
  at_path("rename", tofd, to);
  return real_renameat(fromfd, from, tofd, to);
}

int renameat2(int fromfd, const char *from, int tofd, const char *to, unsigned int flags) {
  REAL(renameat2, renameat2_fn);
  at_path("rename", tofd, to);
  return real_renameat2(fromfd, from, tofd, to, flags);
}

int unlink(const char *path) {
  REAL(unlink, unlink_fn);
  at_path("unlink", AT_FDCWD, path);
  return real_unlink(path);
}

int unlinkat(int dirfd, const char *path, int flags) {
  REAL(unlinkat, unlinkat_fn);
  at_path("unlink", dirfd, path);
  return real_unlinkat(dirfd, path, flags);
}

int fsync(int fd) {
  REAL(fsync, fd_fn);
  at_fd("fsync", fd);
  return real_fsync(fd);
}

int fdatasync(int fd) {
  REAL(fdatasync, fd_fn);
  at_fd("fsync", fd);
  return real_fdatasync(fd);
}

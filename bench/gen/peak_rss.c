/*
 * peak_rss REPORT_FILE COMMAND [ARGS...]
 *
 * Runs COMMAND in one child and writes "<exit code> <peak RSS in KiB> <wall ns>" to
 * REPORT_FILE. The command's stdin, stdout and stderr are this program's.
 *
 * Why a C launcher rather than wait4 in the Python benchmark itself: on Linux a child's
 * ru_maxrss includes the memory it shared with its parent before exec, so every child
 * of a 20-40 MB Python process reports at least 20-40 MB. Forked from this ~1 MB
 * program, the peak is the command's own, and one launcher per command keeps the
 * maximum per command (RUSAGE_CHILDREN would keep it over all commands).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s REPORT_FILE COMMAND [ARGS...]\n", argv[0]);
    return 2;
  }
  struct timespec start, end;
  clock_gettime(CLOCK_MONOTONIC, &start);
  pid_t pid = fork();
  if (pid < 0) {
    perror("fork");
    return 2;
  }
  if (pid == 0) {
    execvp(argv[2], argv + 2);
    perror(argv[2]);
    _exit(127);
  }
  int status = 0;
  struct rusage usage;
  while (wait4(pid, &status, 0, &usage) < 0) {
    if (errno != EINTR) {
      perror("wait4");
      return 2;
    }
  }
  clock_gettime(CLOCK_MONOTONIC, &end);
  long long wall_ns = (end.tv_sec - start.tv_sec) * 1000000000LL + (end.tv_nsec - start.tv_nsec);
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  FILE* report = fopen(argv[1], "w");
  if (report == NULL) {
    perror(argv[1]);
    return 2;
  }
  fprintf(report, "%d %ld %lld\n", code, usage.ru_maxrss, wall_ns);
  return fclose(report) == 0 ? 0 : 2;
}

#include "instance_lock.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "config.h"

/* "<db>.lock" beside the database file itself: a symlinked database and its
 * target share one lock. */
static int lock_path_for(const char *db, char *out, size_t cap)
{
    char real[PATH_MAX];
    int n;
    if (realpath(db, real)) {
        n = snprintf(out, cap, "%s.lock", real);
    } else {
        const char *slash = strrchr(db, '/');
        char dir[PATH_MAX];
        const char *base = slash ? slash + 1 : db;
        if (*base == '\0')
            return FEDGE_ERR_INVALID_ARG;
        if (!slash)
            snprintf(dir, sizeof dir, ".");
        else if (slash == db)
            snprintf(dir, sizeof dir, "/");
        else if ((size_t)(slash - db) >= sizeof dir)
            return FEDGE_ERR_RANGE;
        else
            snprintf(dir, sizeof dir, "%.*s", (int)(slash - db), db);
        if (!realpath(dir, real))
            return FEDGE_ERR_IO;
        n = snprintf(out, cap, "%s/%s.lock", strcmp(real, "/") ? real : "", base);
    }
    return n < 0 || (size_t)n >= cap ? FEDGE_ERR_RANGE : FEDGE_OK;
}

/* The pid holding an flock() on the file behind fd, from /proc/locks
 * ("N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE START END"); 0 when unknown. */
static pid_t flock_owner(int fd)
{
    struct stat st;
    char line[256];
    pid_t pid = 0;
    if (fstat(fd, &st) != 0)
        return 0;
    FILE *f = fopen("/proc/locks", "r");
    if (!f)
        return 0;
    while (!pid && fgets(line, sizeof line, f)) {
        char kind[16], mode[16], rw[16];
        long p;
        unsigned maj, min;
        unsigned long long ino;
        if (sscanf(line, "%*d: %15s %15s %15s %ld %x:%x:%llu", kind, mode, rw, &p, &maj, &min, &ino) == 7 &&
            strcmp(kind, "FLOCK") == 0 && ino == (unsigned long long)st.st_ino && p > 0 && p != getpid())
            pid = (pid_t)p;
    }
    fclose(f);
    return pid;
}

/* flock() on the database file itself: every path to it (a hard link, a
 * second symlink, a deleted sidecar) meets the same lock. BSD locks belong
 * to the open file, so SQLite closing its own descriptors of the file (and
 * dropping every POSIX lock this process holds on it) leaves this one. */
static int lock_database_file(const char *db_path, int *out_fd, pid_t *owner, char *err, size_t errlen)
{
    int fd = open(db_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "database %s: %s", db_path, strerror(errno));
        return FEDGE_ERR_IO;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        if (e != EWOULDBLOCK) {
            snprintf(err, errlen, "database %s: cannot lock it: %s", db_path, strerror(e));
            close(fd);
            return FEDGE_ERR_IO;
        }
        *owner = flock_owner(fd);
        if (*owner > 0)
            snprintf(err, errlen, "database %s is in use by pid %ld (it holds the database file itself);"
                     " stop that process first", db_path, (long)*owner);
        else
            snprintf(err, errlen, "database %s is in use by another process (it holds the database file itself)",
                     db_path);
        close(fd);
        return FEDGE_ERR_INSTANCE_LOCKED;
    }
    *out_fd = fd;
    return FEDGE_OK;
}

static pid_t pid_in_file(int fd)
{
    char buf[32];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *end;
    long v = strtol(buf, &end, 10);
    return v > 0 && v <= INT_MAX && (*end == '\n' || *end == '\0') ? (pid_t)v : 0;
}

int fedge_instance_lock_acquire(const char *db_path, fedge_instance_lock *lock, pid_t *owner,
                                char *err, size_t errlen)
{
    char path[PATH_MAX + 8];
    int ret = FEDGE_OK, fd = -1;
    *owner = 0;
    lock->fd = -1;
    lock->db_fd = -1;
    ret = lock_path_for(db_path, path, sizeof path);
    if (ret != FEDGE_OK) {
        snprintf(err, errlen, "database %s: cannot place its lock file (%s)", db_path,
                 ret == FEDGE_ERR_IO ? strerror(errno) : fedge_strerror(ret));
        return ret == FEDGE_ERR_IO ? FEDGE_ERR_IO : ret;
    }
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "lock file %s: %s", path, strerror(errno));
        return FEDGE_ERR_IO;
    }
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    if (fcntl(fd, F_SETLK, &fl) != 0) {
        if (errno != EACCES && errno != EAGAIN) {
            snprintf(err, errlen, "lock file %s: %s", path, strerror(errno));
            FAIL(FEDGE_ERR_IO);
        }
        struct flock probe = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
        if (fcntl(fd, F_GETLK, &probe) == 0 && probe.l_type != F_UNLCK && probe.l_pid > 0)
            *owner = probe.l_pid;
        else
            *owner = pid_in_file(fd);
        if (*owner > 0)
            snprintf(err, errlen, "database %s is in use by pid %ld (lock %s); stop that process first",
                     db_path, (long)*owner, path);
        else
            snprintf(err, errlen, "database %s is in use by another process (lock %s)", db_path, path);
        FAIL(FEDGE_ERR_INSTANCE_LOCKED);
    }
    CHK(lock_database_file(db_path, &lock->db_fd, owner, err, errlen));
    char text[32];
    int n = snprintf(text, sizeof text, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, text, (size_t)n, 0) != n) {
        snprintf(err, errlen, "lock file %s: %s", path, strerror(errno));
        FAIL(FEDGE_ERR_IO);
    }
    lock->fd = fd;
    fd = -1;
cleanup:
    if (fd >= 0)
        close(fd);
    if (ret != FEDGE_OK && lock->db_fd >= 0) {
        close(lock->db_fd);
        lock->db_fd = -1;
    }
    return ret;
}

void fedge_instance_lock_release(fedge_instance_lock *lock)
{
    if (!lock || lock->fd < 0)
        return;
    /* emptied while still locked, so no reader sees our pid on a free lock */
    if (ftruncate(lock->fd, 0) != 0) {
        /* the lock still goes with the close; a stale pid in a free file is harmless */
    }
    close(lock->fd);
    lock->fd = -1;
    if (lock->db_fd >= 0)
        close(lock->db_fd);
    lock->db_fd = -1;
}

/* Inodes of the UDP sockets bound to port, from /proc/net/udp{,6}. */
static size_t udp_inodes(unsigned port, unsigned long *inodes, size_t cap)
{
    static const char *const tables[] = {"/proc/net/udp", "/proc/net/udp6"};
    size_t n = 0;
    for (size_t t = 0; t < FEDGE_ARRAY_LEN(tables); t++) {
        FILE *f = fopen(tables[t], "r");
        char line[512];
        if (!f)
            continue;
        while (n < cap && fgets(line, sizeof line, f)) {
            char local[80];
            unsigned lport;
            unsigned long inode;
            /* sl local rem st tx:rx tr:when retrnsmt uid timeout inode */
            if (sscanf(line, " %*s %79s %*s %*s %*s %*s %*s %*s %*s %lu", local, &inode) != 2)
                continue;
            char *colon = strrchr(local, ':');
            if (!colon || sscanf(colon + 1, "%x", &lport) != 1 || lport != port || inode == 0)
                continue;
            inodes[n++] = inode;
        }
        fclose(f);
    }
    return n;
}

static pid_t pid_holding_socket(const unsigned long *inodes, size_t n_inodes)
{
    pid_t found = 0, self = getpid();
    DIR *proc = opendir("/proc");
    struct dirent *e;
    if (!proc)
        return 0;
    while (!found && (e = readdir(proc)) != NULL) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end != '\0' || pid <= 0 || pid == self)
            continue;
        char dir[64];
        snprintf(dir, sizeof dir, "/proc/%ld/fd", pid);
        DIR *fds = opendir(dir);
        struct dirent *d;
        if (!fds)
            continue;
        while (!found && (d = readdir(fds)) != NULL) {
            char link[352], target[64];
            snprintf(link, sizeof link, "%s/%s", dir, d->d_name);
            ssize_t len = readlink(link, target, sizeof target - 1);
            if (len <= 0)
                continue;
            target[len] = '\0';
            unsigned long inode;
            if (sscanf(target, "socket:[%lu]", &inode) != 1)
                continue;
            for (size_t i = 0; i < n_inodes; i++)
                if (inodes[i] == inode)
                    found = (pid_t)pid;
        }
        closedir(fds);
    }
    closedir(proc);
    return found;
}

int fedge_listen_probe(const char *listen, pid_t *owner, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char why[160];
    *owner = 0;
    if (fedge_agg_parse_listen(listen, &ss, &len, why, sizeof why) != FEDGE_OK) {
        snprintf(err, errlen, "listen: %s", why);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    int fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "listen %s: socket: %s", listen, strerror(errno));
        return FEDGE_ERR_IO;
    }
    int ret = FEDGE_OK;
    if (bind(fd, (struct sockaddr *)&ss, len) != 0) {
        int e = errno;
        if (e == EADDRINUSE) {
            unsigned long inodes[16];
            unsigned port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                           : ((struct sockaddr_in *)&ss)->sin_port);
            *owner = pid_holding_socket(inodes, udp_inodes(port, inodes, FEDGE_ARRAY_LEN(inodes)));
            if (*owner > 0)
                snprintf(err, errlen, "listen %s: address in use by pid %ld", listen, (long)*owner);
            else
                snprintf(err, errlen, "listen %s: address in use by another process", listen);
            ret = FEDGE_ERR_INSTANCE_LOCKED;
        } else {
            snprintf(err, errlen, "listen %s: %s", listen, strerror(e));
            ret = FEDGE_ERR_IO;
        }
    }
    close(fd);
    return ret;
}

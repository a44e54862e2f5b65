/* instance_lock.h — one aggregator per database and per listen address.
 *
 * The database lock is an fcntl (POSIX) write lock on the sidecar file
 * "<db>.lock" (next to the database, symlinks resolved), which holds the
 * owner's pid for operators. The kernel drops the lock when the process ends
 * however it ends (kill -9 included), so a lock is never stale; the file
 * itself stays and is simply re-locked by the next start. Take it before
 * the database is opened for writing and keep it for the daemon's life.
 * POSIX locks are per process: nothing else in the process may open and
 * close the lock file, and forked children do not inherit the lock.
 * The database file itself is also flock()ed (BSD lock, tied to the open
 * file, independent of SQLite's POSIX locks): a hard link or another path to
 * the same file, or a deleted sidecar, still meets the lock; its holder's
 * pid is read from /proc/locks.
 *
 * The listen probe binds the address once without SO_REUSEADDR: libcoap
 * sets SO_REUSEADDR on its UDP endpoints, which lets a second daemon bind
 * the same address silently; a bind without it fails with EADDRINUSE while
 * any socket holds the address. */
#ifndef FEDGE_INSTANCE_LOCK_H
#define FEDGE_INSTANCE_LOCK_H

#include <stddef.h>
#include <sys/types.h>

typedef struct {
    int fd;                         /* the sidecar; -1: not held */
    int db_fd;                      /* the database file, flock()ed; -1: not held */
} fedge_instance_lock;

/* Locks db_path's sidecar. FEDGE_ERR_INSTANCE_LOCKED when another process
 * holds it: *owner gets its pid (0 if it could not be learnt) and err a line
 * naming it. Other failures (no such folder, permissions): FEDGE_ERR_IO. */
int fedge_instance_lock_acquire(const char *db_path, fedge_instance_lock *lock, pid_t *owner,
                                char *err, size_t errlen);
/* Empties the pid file and drops the lock; a lock that is not held is fine. */
void fedge_instance_lock_release(fedge_instance_lock *lock);

/* listen is "HOST:PORT" with a numeric host ("[V6]:PORT" for IPv6).
 * FEDGE_ERR_INSTANCE_LOCKED when the UDP address is in use, with the pid of
 * a process holding it in *owner when /proc tells (0 otherwise). */
int fedge_listen_probe(const char *listen, pid_t *owner, char *err, size_t errlen);

#endif

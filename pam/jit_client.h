/*
 * jit_client.h - one request/reply exchange with jitd over its Unix socket,
 * with the checks of a client that lives inside sshd or sudo.
 */
#ifndef JIT_CLIENT_H
#define JIT_CLIENT_H

#include "jit_proto.h"

#define JIT_IO_TIMEOUT_MS 5000   /* connect, send, and a reply to anything but wait */
#define JIT_WAIT_GRACE_MS 5000   /* how long past its timeout a wait reply may take */

/*
 * Connects to the agent at path, sends req and reads one reply into *rep.
 * reply_ms bounds the time from the end of sending to the end of the reply;
 * connecting and sending are bounded by JIT_IO_TIMEOUT_MS each.
 * If intr_aborts, a signal that interrupts poll() ends the call (JIT_E_INTR).
 *
 * Returns JIT_OK (a well-formed reply, which may still be "JIT/1 error"),
 * JIT_E_UNREACHABLE, JIT_E_INSECURE, JIT_E_PROTO, JIT_E_VERSION,
 * JIT_E_TOOBIG, JIT_E_NOMEM, JIT_E_INTR or JIT_E_ARG; on failure err holds
 * one sentence for the log.
 */
int jit_call(const char *path, struct jit_req *req, int reply_ms, int intr_aborts,
	     struct jit_reply *rep, char *err, size_t errlen);

/*
 * jit_call that also watches watch_fd (>= 0) while waiting for the reply, for
 * a hang-up only (POLLRDHUP/POLLHUP/POLLERR; its data is never read): when it
 * hangs up, the call ends at once with JIT_E_GONE and closes the agent's
 * connection (which cancels a wait made with cancel_on_close=1).
 */
int jit_call_watching(const char *path, struct jit_req *req, int reply_ms, int intr_aborts,
		      int watch_fd, struct jit_reply *rep, char *err, size_t errlen);

#endif

/* server.h — the aggregator's CoAP/DTLS front end (libcoap on OpenSSL).
 *
 * Resources: GET /round (observable, RFC 7641, unless cfg.no_observe),
 * GET /model (Block2, ETag), POST /update (Block1), GET /status; see
 * docs/PROTOCOL.md. DTLS-PSK identities are the device ids
 * of the keys file; an unknown identity or a wrong key fails the handshake.
 * The server owns no aggregator state: handlers call agg.h. */
#ifndef FEDGE_SERVER_H
#define FEDGE_SERVER_H

#include "agg.h"
#include "metrics_http.h"

typedef struct fedge_server fedge_server;

/* Binds cfg.listen (DTLS, or plain UDP when cfg.insecure). */
int fedge_server_start(fedge_aggregator *a, fedge_server **out, char *err, size_t errlen);
/* Serves for up to timeout_ms; first notifies /round's observers when what
 * /round says has changed since the last call (the aggregator's state,
 * round, versions, run, round_epoch). */
int fedge_server_process(fedge_server *s, unsigned timeout_ms);
void fedge_server_free(fedge_server *s);
/* The front end's numbers for /metrics (metrics_http.h). */
void fedge_server_metrics(const fedge_server *s, fedge_metrics_server *m);
/* SIGHUP: reloads the keys file (fedge_agg_keys_prepare/record/commit; the
 * ledger is recorded after every allocation that can fail) and resizes
 * the per-device tables (DTLS PSKs, /round observers) with it; a removed
 * device's observation is dropped and its PSK no longer found. On failure
 * nothing changes (the error is logged). */
int fedge_server_reload_keys(fedge_server *s);

#endif

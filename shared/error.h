/* error.h — fedge status codes.
 *
 * Every library function returns int: 0 (FEDGE_OK) on success, a negative
 * FEDGE_ERR_<MODULE>_<REASON> code otherwise. Codes are distinct across the
 * whole library so a log line or a test can name the exact reason.
 * fedge_strerror() never returns NULL. */
#ifndef FEDGE_ERROR_H
#define FEDGE_ERROR_H

enum {
    FEDGE_OK = 0,

    /* generic -1 .. -19 */
    FEDGE_ERR_INVALID_ARG = -1,
    FEDGE_ERR_NOMEM = -2,
    FEDGE_ERR_IO = -3,
    FEDGE_ERR_RANGE = -4,      /* a value outside its documented bounds */
    FEDGE_ERR_NOT_FOUND = -5,
    FEDGE_ERR_INTERNAL = -6,
    FEDGE_ERR_BUFFER_TOO_SMALL = -7,
    FEDGE_ERR_CRYPTO = -8,     /* a crypto library call (mbedTLS, OpenSSL) failed */
    FEDGE_ERR_SQL = -9,
    FEDGE_ERR_UNSUPPORTED = -10,
    FEDGE_ERR_BUSY = -11,      /* transient: the database is locked by another process; retry */

    /* model spec and model files -20 .. -39 */
    FEDGE_ERR_MODEL_SPEC = -20,
    FEDGE_ERR_MODEL_SHAPE = -21,
    FEDGE_ERR_MODEL_FILE_MAGIC = -22,
    FEDGE_ERR_MODEL_FILE_VERSION = -23,
    FEDGE_ERR_MODEL_FILE_TRUNCATED = -24,
    FEDGE_ERR_MODEL_FILE_CHECKSUM = -25,
    FEDGE_ERR_MODEL_NONFINITE = -26,

    /* datasets, shards -40 .. -59 */
    FEDGE_ERR_DATA_FORMAT = -40,
    FEDGE_ERR_DATA_TRUNCATED = -41,
    FEDGE_ERR_DATA_LABEL = -42,
    FEDGE_ERR_SHARD_MAGIC = -43,
    FEDGE_ERR_SHARD_VERSION = -44,
    FEDGE_ERR_SHARD_TRUNCATED = -45,  /* file shorter than its header declares */
    FEDGE_ERR_SHARD_OVERSIZED = -46,  /* file longer than its header declares */
    FEDGE_ERR_SHARD_HEADER = -47,     /* a header field out of range */
    FEDGE_ERR_SHARD_CHECKSUM = -48,   /* trailing SHA-256 does not match */
    FEDGE_ERR_DATA_MISMATCH = -49,    /* image and label files disagree on the row count */

    /* delta wire format -60 .. -79 */
    FEDGE_ERR_DELTA_TRUNCATED = -60,
    FEDGE_ERR_DELTA_OVERSIZED = -61,
    FEDGE_ERR_DELTA_MAGIC = -62,
    FEDGE_ERR_DELTA_VERSION = -63,
    FEDGE_ERR_DELTA_ENCODING = -64,
    FEDGE_ERR_DELTA_SHAPE = -65,      /* element count or model id differ from the model */
    FEDGE_ERR_DELTA_NONFINITE = -66,
    FEDGE_ERR_DELTA_ROUND = -67,      /* update is for another round */
    FEDGE_ERR_DELTA_BASE = -68,       /* base version is not the current model */
    FEDGE_ERR_DELTA_BLOCK = -69,      /* bad int8 block size */

    /* crypto envelope -80 .. -99 */
    FEDGE_ERR_ENV_TRUNCATED = -80,
    FEDGE_ERR_ENV_OVERSIZED = -81,
    FEDGE_ERR_ENV_MAGIC = -82,
    FEDGE_ERR_ENV_VERSION = -83,
    FEDGE_ERR_ENV_KEY_MISMATCH = -84, /* sealed under another device's key */
    FEDGE_ERR_ENV_AUTH = -85,         /* GCM tag did not verify: tampered bytes */
    FEDGE_ERR_ENV_REPLAY = -86,       /* counter not above the last one accepted */
    FEDGE_ERR_ENV_RUN = -87,          /* sealed for another run (run id in the aad) */

    /* config -100 .. -109 */
    FEDGE_ERR_CONFIG_SYNTAX = -100,
    FEDGE_ERR_CONFIG_UNKNOWN_KEY = -101,
    FEDGE_ERR_CONFIG_VALUE = -102,
    FEDGE_ERR_CONFIG_PERMS = -103,    /* a secrets file readable by group/other */

    /* aggregator, edge, protocol -110 .. -139 */
    FEDGE_ERR_PROTO = -110,
    FEDGE_ERR_TIMEOUT = -111,
    FEDGE_ERR_REJECTED = -112,
    FEDGE_ERR_DUPLICATE = -113,
    FEDGE_ERR_STATE = -114,
    /* edge client -130 .. -139 */
    FEDGE_ERR_EDGE_ROUND_SYNTAX = -130,    /* /round body: a line that is not key=value */
    FEDGE_ERR_EDGE_ROUND_MISSING = -131,   /* /round body: a required key is absent */
    FEDGE_ERR_EDGE_ROUND_VALUE = -132,     /* /round body: a value out of range */
    FEDGE_ERR_EDGE_ROUND_DUPLICATE = -133, /* /round body: a key given twice */
    FEDGE_ERR_EDGE_STOPPED = -134,         /* interrupted by SIGINT/SIGTERM */
    FEDGE_ERR_EDGE_COUNTER = -135,         /* update counter file corrupt */
    FEDGE_ERR_EDGE_USAGE = -136,           /* bad command-line flag */

    /* cluster -140 .. -159 */
    FEDGE_ERR_CLUSTER_COMM = -140,
    FEDGE_ERR_CLUSTER_CHECKPOINT = -141,
    FEDGE_ERR_CLUSTER_GPU = -142,

    /* policy and audit -160 .. -189 */
    FEDGE_ERR_POLICY_SYNTAX = -160,
    FEDGE_ERR_POLICY_VALUE = -161,
    FEDGE_ERR_POLICY_BUDGET = -162,
    FEDGE_ERR_AUDIT_CHAIN = -163,
    FEDGE_ERR_AUDIT_SIGNATURE = -164,
    FEDGE_ERR_AUDIT_FILE = -165,
    FEDGE_ERR_AUDIT_NOT_FEDGE_DB = -166,
    FEDGE_ERR_POLICY_UNKNOWN_KEY = -167, /* a policy file key fedge does not know */

    /* single instance -190 .. -199 */
    FEDGE_ERR_INSTANCE_LOCKED = -190,    /* the database or listen address is in use */
    FEDGE_ERR_SIGNING_KEY = -191,        /* signing key absent or not the log's signer */

    /* delta retention and schema (policy/audit range, kept apart) */
    FEDGE_ERR_SCHEMA_OLD = -185,         /* a database of an older schema, opened read-only */
    FEDGE_ERR_DELTA_PRUNED = -186,       /* an update's delta body was dropped by retention */

    /* model import/export (tools/model) -200 .. -209 */
    FEDGE_ERR_IMPORT_FORMAT = -200,      /* a malformed safetensors file (length, JSON, offsets) */
    FEDGE_ERR_IMPORT_TENSOR = -201,      /* a tensor's name, dtype or shape does not fit the spec */

    /* files (shared/fileio) -210 .. -219 */
    FEDGE_ERR_NOT_REGULAR = -210,        /* a path to read or replace is a device, FIFO, socket (or a refused link) */

    /* aggregation strategies (aggregator/combine.h, server_opt.h) -220 .. -229 */
    FEDGE_ERR_STRATEGY_TOO_FEW = -220,   /* too few updates for the robust rule's f or beta */
    FEDGE_ERR_STRATEGY_STATE = -221,     /* a stored optimiser state that does not fit the run */

    /* cluster, continued */
    FEDGE_ERR_CLUSTER_MEMORY = -143,     /* training state over the per-rank memory budget */

    /* SCAFFOLD client side (edge/control.h) -230 .. -239 */
    FEDGE_ERR_CONTROL_RANGE = -230,      /* a control variate beyond its plausible bound */

    /* an update's training metrics block (shared/update.h) -240 .. -249 */
    FEDGE_ERR_UPDATE_METRICS = -240,     /* malformed training metrics block */

    /* the edge's base file (edge/trainer.h) -250 .. -259 */
    FEDGE_ERR_BASE_WRITE = -250,         /* the base model could not be written to the state dir */
};

const char *fedge_strerror(int code);

#endif

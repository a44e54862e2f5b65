#include "error.h"

const char *fedge_strerror(int code)
{
    switch (code) {
    case FEDGE_OK: return "ok";
    case FEDGE_ERR_INVALID_ARG: return "invalid argument";
    case FEDGE_ERR_NOMEM: return "out of memory";
    case FEDGE_ERR_IO: return "I/O error";
    case FEDGE_ERR_RANGE: return "value out of range";
    case FEDGE_ERR_NOT_FOUND: return "not found";
    case FEDGE_ERR_INTERNAL: return "internal error";
    case FEDGE_ERR_BUFFER_TOO_SMALL: return "buffer too small";
    case FEDGE_ERR_CRYPTO: return "crypto library error";
    case FEDGE_ERR_SQL: return "database error";
    case FEDGE_ERR_UNSUPPORTED: return "unsupported";
    case FEDGE_ERR_BUSY: return "database busy (locked by another process)";
    case FEDGE_ERR_MODEL_SPEC: return "bad model spec";
    case FEDGE_ERR_MODEL_SHAPE: return "model shape mismatch";
    case FEDGE_ERR_MODEL_FILE_MAGIC: return "not a fedge model file";
    case FEDGE_ERR_MODEL_FILE_VERSION: return "unsupported model file version";
    case FEDGE_ERR_MODEL_FILE_TRUNCATED: return "model file truncated or wrong length";
    case FEDGE_ERR_MODEL_FILE_CHECKSUM: return "model file checksum mismatch";
    case FEDGE_ERR_MODEL_NONFINITE: return "model has NaN or Inf parameters";
    case FEDGE_ERR_DATA_FORMAT: return "bad dataset format";
    case FEDGE_ERR_DATA_TRUNCATED: return "dataset file truncated";
    case FEDGE_ERR_DATA_LABEL: return "label out of range";
    case FEDGE_ERR_SHARD_MAGIC: return "not a fedge shard file";
    case FEDGE_ERR_SHARD_VERSION: return "unsupported shard file version";
    case FEDGE_ERR_SHARD_TRUNCATED: return "shard file shorter than its header declares";
    case FEDGE_ERR_SHARD_OVERSIZED: return "shard file longer than its header declares";
    case FEDGE_ERR_SHARD_HEADER: return "shard header field out of range";
    case FEDGE_ERR_SHARD_CHECKSUM: return "shard file checksum mismatch";
    case FEDGE_ERR_DATA_MISMATCH: return "image and label counts differ";
    case FEDGE_ERR_DELTA_TRUNCATED: return "delta truncated";
    case FEDGE_ERR_DELTA_OVERSIZED: return "delta longer than its header declares";
    case FEDGE_ERR_DELTA_MAGIC: return "not a fedge delta";
    case FEDGE_ERR_DELTA_VERSION: return "unsupported delta format version";
    case FEDGE_ERR_DELTA_ENCODING: return "unknown delta encoding";
    case FEDGE_ERR_DELTA_SHAPE: return "delta shape does not match the model";
    case FEDGE_ERR_DELTA_NONFINITE: return "delta has NaN or Inf values";
    case FEDGE_ERR_DELTA_ROUND: return "delta is for another round";
    case FEDGE_ERR_DELTA_BASE: return "delta base version is not the current model";
    case FEDGE_ERR_DELTA_BLOCK: return "bad int8 block size";
    case FEDGE_ERR_ENV_TRUNCATED: return "envelope truncated";
    case FEDGE_ERR_ENV_OVERSIZED: return "envelope oversized";
    case FEDGE_ERR_ENV_MAGIC: return "not a fedge envelope";
    case FEDGE_ERR_ENV_VERSION: return "unsupported envelope version";
    case FEDGE_ERR_ENV_KEY_MISMATCH: return "sealed under another key";
    case FEDGE_ERR_ENV_AUTH: return "authentication failed (tampered)";
    case FEDGE_ERR_ENV_REPLAY: return "replayed update (counter not fresh)";
    case FEDGE_ERR_ENV_RUN: return "update sealed for another run";
    case FEDGE_ERR_CONFIG_SYNTAX: return "config syntax error";
    case FEDGE_ERR_CONFIG_UNKNOWN_KEY: return "unknown config key";
    case FEDGE_ERR_CONFIG_VALUE: return "bad config value";
    case FEDGE_ERR_CONFIG_PERMS: return "secrets file is readable by group or others";
    case FEDGE_ERR_PROTO: return "protocol error";
    case FEDGE_ERR_TIMEOUT: return "timed out";
    case FEDGE_ERR_REJECTED: return "rejected";
    case FEDGE_ERR_DUPLICATE: return "duplicate";
    case FEDGE_ERR_STATE: return "wrong state";
    case FEDGE_ERR_EDGE_ROUND_SYNTAX: return "/round reply: line is not key=value";
    case FEDGE_ERR_EDGE_ROUND_MISSING: return "/round reply: required key missing";
    case FEDGE_ERR_EDGE_ROUND_VALUE: return "/round reply: value out of range";
    case FEDGE_ERR_EDGE_ROUND_DUPLICATE: return "/round reply: key given twice";
    case FEDGE_ERR_EDGE_STOPPED: return "stopped by signal";
    case FEDGE_ERR_EDGE_COUNTER: return "update counter file corrupt";
    case FEDGE_ERR_EDGE_USAGE: return "bad command-line usage";
    case FEDGE_ERR_CLUSTER_COMM: return "collective communication failed";
    case FEDGE_ERR_CLUSTER_CHECKPOINT: return "bad or missing checkpoint";
    case FEDGE_ERR_CLUSTER_GPU: return "GPU error";
    case FEDGE_ERR_POLICY_SYNTAX: return "policy file syntax error";
    case FEDGE_ERR_POLICY_VALUE: return "bad policy value";
    case FEDGE_ERR_POLICY_BUDGET: return "privacy budget exhausted";
    case FEDGE_ERR_AUDIT_CHAIN: return "audit chain broken";
    case FEDGE_ERR_AUDIT_SIGNATURE: return "audit signature invalid";
    case FEDGE_ERR_AUDIT_FILE: return "model file does not match the audit log";
    case FEDGE_ERR_AUDIT_NOT_FEDGE_DB: return "not a fedge database";
    case FEDGE_ERR_POLICY_UNKNOWN_KEY: return "unknown policy key";
    case FEDGE_ERR_INSTANCE_LOCKED: return "in use by another process";
    case FEDGE_ERR_SIGNING_KEY: return "signing key does not match the log";
    case FEDGE_ERR_SCHEMA_OLD:
        return "database schema older than this build (start this fedge-aggregator on it once to migrate it)";
    case FEDGE_ERR_DELTA_PRUNED:
        return "delta body dropped by retention (its SHA-256 stays in the audit chain)";
    case FEDGE_ERR_IMPORT_FORMAT: return "malformed safetensors file";
    case FEDGE_ERR_IMPORT_TENSOR: return "tensor does not fit the model spec";
    case FEDGE_ERR_STRATEGY_TOO_FEW: return "too few updates for the aggregation rule";
    case FEDGE_ERR_STRATEGY_STATE: return "stored server optimiser state does not fit this run";
    case FEDGE_ERR_CONTROL_RANGE: return "control variate beyond its plausible bound (non-finite or too large for the model's scale)";
    case FEDGE_ERR_UPDATE_METRICS: return "malformed training metrics block (version, length, flags or values)";
    case FEDGE_ERR_NOT_REGULAR: return "exists and is not a regular file (a FIFO, device or socket is never read or replaced, nor a symbolic link where one is refused)";
    case FEDGE_ERR_CLUSTER_MEMORY: return "training state exceeds the per-rank memory budget";
    case FEDGE_ERR_BASE_WRITE: return "cannot write the base model to the state dir";
    default: return "unknown error";
    }
}

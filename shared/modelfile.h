/* modelfile.h — model files on disk.
 *
 * Layout (little-endian): magic "FMDL" | u32 version (1) | u32 spec_len |
 * spec text (canonical, spec_len bytes, no NUL) | u64 n_params |
 * n_params f32 | 32-byte SHA-256 of everything before it.
 *
 * A model's version is the SHA-256 of its parameter bytes together with the
 * spec (fedge_model_version), which equals the file's trailing checksum, so
 * `sha256sum` of the body identifies it. Writes are atomic (temp file, fsync,
 * rename). */
#ifndef FEDGE_MODELFILE_H
#define FEDGE_MODELFILE_H

#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "hash.h"
#include "model.h"

int fedge_model_version(const fedge_model *m, uint8_t version[FEDGE_HASH_LEN]);
/* version_out may be NULL. The file gets mode 0644; a model with NaN/Inf
 * parameters is refused (FEDGE_ERR_MODEL_NONFINITE) and, like any failure,
 * leaves an existing file at path as it was and no temp file behind. */
int fedge_model_save(const fedge_model *m, const char *path, uint8_t version_out[FEDGE_HASH_LEN]);
/* Initialises *m (caller frees with fedge_model_free); on failure *m and
 * version_out are untouched. Checks, in order: magic (FILE_MAGIC), version
 * (FILE_VERSION), spec text (MODEL_SPEC), n_params against the spec
 * (MODEL_SHAPE), total length against the file size (FILE_TRUNCATED),
 * checksum (FILE_CHECKSUM), finite values (MODEL_NONFINITE). A missing file
 * is FEDGE_ERR_NOT_FOUND, other read errors FEDGE_ERR_IO. */
int fedge_model_load(const char *path, fedge_model *m, uint8_t version_out[FEDGE_HASH_LEN]);
/* Serialise into memory (for GET /model); *out malloc'd, caller frees.
 * deserialize checks exactly what load does. */
int fedge_model_serialize(const fedge_model *m, uint8_t **out, size_t *out_len,
                          uint8_t version_out[FEDGE_HASH_LEN]);
int fedge_model_deserialize(const uint8_t *buf, size_t len, fedge_model *m,
                            uint8_t version_out[FEDGE_HASH_LEN]);
/* The same checks on a malloc'd buf that it takes over (freed on failure):
 * the parameters are converted in place and buf becomes m->params, so a
 * model costs its body once, not twice. */
int fedge_model_deserialize_owned(uint8_t *buf, size_t len, fedge_model *m,
                                  uint8_t version_out[FEDGE_HASH_LEN]);
/* fedge_model_version in pieces, for parameters that are never whole in
 * memory: begin with the spec and n_params (checked as build_prefix does),
 * feed all n_params parameters in order in any pieces, then
 * fedge_sha256_final gives the version. ctx is the caller's (freed with
 * fedge_sha256_free, also after a failure). */
int fedge_model_version_begin(fedge_sha256_ctx *ctx, const fedge_model_spec *spec, size_t n_params);
int fedge_model_version_update(fedge_sha256_ctx *ctx, const float *params, size_t n);

#endif

/* server_opt.c — the table of server optimisers and their state (server_opt.h). */
#include "server_opt.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bytes.h"
#include "common.h"

static const fedge_server_optimizer *const table[] = {
    &fedge_server_opt_sgd, &fedge_server_opt_momentum, &fedge_server_opt_adam,
    &fedge_server_opt_yogi, &fedge_server_opt_adagrad,
};

#define STATE_MAGIC "FSOS"
#define STATE_FORMAT 1u
#define DESC_LEN 128
#define NAME_LEN 16
#define HEAD_LEN (4 + 4 + 8 + 4 + 8 + DESC_LEN)

const fedge_server_optimizer *fedge_server_opt_find(const char *name)
{
    for (size_t i = 0; name && i < FEDGE_ARRAY_LEN(table); i++)
        if (strcmp(table[i]->name, name) == 0)
            return table[i];
    return NULL;
}

const char *fedge_server_opt_names(void)
{
    static char names[128];
    if (!names[0]) {
        size_t off = 0;
        for (size_t i = 0; i < FEDGE_ARRAY_LEN(table) && off < sizeof names; i++)
            off += (size_t)snprintf(names + off, sizeof names - off, "%s%s", i ? "|" : "", table[i]->name);
    }
    return names;
}

int fedge_server_opt_check(const fedge_server_opt_params *p, char *why, size_t whylen)
{
    if (!fedge_server_opt_find(p->name)) {
        snprintf(why, whylen, "unknown server_optimizer '%s' (one of %s)", p->name, fedge_server_opt_names());
        return FEDGE_ERR_INVALID_ARG;
    }
    if (!(p->lr > 0) || !isfinite(p->lr)) {
        snprintf(why, whylen, "server_lr %g must be > 0", p->lr);
        return FEDGE_ERR_INVALID_ARG;
    }
    if (!(p->momentum >= 0 && p->momentum < 1) || !(p->beta1 >= 0 && p->beta1 < 1) ||
        !(p->beta2 >= 0 && p->beta2 < 1)) {
        snprintf(why, whylen, "server_momentum, server_beta1 and server_beta2 must be in [0, 1)");
        return FEDGE_ERR_INVALID_ARG;
    }
    if (!(p->tau > 0) || !isfinite(p->tau)) {
        snprintf(why, whylen, "server_tau %g must be > 0", p->tau);
        return FEDGE_ERR_INVALID_ARG;
    }
    return FEDGE_OK;
}

int fedge_server_opt_init(fedge_server_opt *o, const fedge_server_opt_params *p, size_t n)
{
    char why[160];
    memset(o, 0, sizeof *o);
    if (n == 0 || fedge_server_opt_check(p, why, sizeof why) != FEDGE_OK)
        return FEDGE_ERR_INVALID_ARG;
    o->impl = fedge_server_opt_find(p->name);
    o->p = *p;
    o->n = n;
    for (size_t v = 0; v < o->impl->n_vectors; v++) {
        o->vec[v] = calloc(n, sizeof(float));
        if (!o->vec[v]) {
            fedge_server_opt_free(o);
            return FEDGE_ERR_NOMEM;
        }
    }
    if (o->impl->init)
        o->impl->init(o);
    return FEDGE_OK;
}

void fedge_server_opt_free(fedge_server_opt *o)
{
    if (!o)
        return;
    for (size_t v = 0; v < FEDGE_SERVER_OPT_MAX_VECTORS; v++)
        free(o->vec[v]);
    memset(o, 0, sizeof *o);
}

int fedge_server_opt_copy(fedge_server_opt *dst, const fedge_server_opt *src)
{
    int ret = fedge_server_opt_init(dst, &src->p, src->n);
    if (ret != FEDGE_OK)
        return ret;
    for (size_t v = 0; v < src->impl->n_vectors; v++)
        memcpy(dst->vec[v], src->vec[v], src->n * sizeof(float));
    dst->steps = src->steps;
    return FEDGE_OK;
}

void fedge_server_opt_step(fedge_server_opt *o, float *w, const float *d)
{
    o->impl->step(o, w, d);
    o->steps++;
}

int fedge_server_opt_describe(const fedge_server_opt_params *p, char *buf, size_t cap)
{
    const fedge_server_optimizer *impl = fedge_server_opt_find(p->name);
    if (!impl)
        return FEDGE_ERR_INVALID_ARG;
    return impl->describe(p, buf, cap);
}

size_t fedge_server_opt_state_size(const fedge_server_opt *o, size_t n_extra)
{
    return HEAD_LEN + (o->impl->n_vectors + n_extra) * (NAME_LEN + 4 * o->n);
}

static void put_vector(uint8_t **p, const char *name, const float *v, size_t n)
{
    memset(*p, 0, NAME_LEN);
    memcpy(*p, name, strnlen(name, NAME_LEN - 1));
    *p += NAME_LEN;
    for (size_t i = 0; i < n; i++, *p += 4)
        fedge_put_f32(*p, v[i]);
}

int fedge_server_opt_save(const fedge_server_opt *o, const char *const *extra_names,
                          const float *const *extra, size_t n_extra, uint8_t *out, size_t cap,
                          size_t *len)
{
    char desc[DESC_LEN];
    size_t need = fedge_server_opt_state_size(o, n_extra);
    if (cap < need)
        return FEDGE_ERR_BUFFER_TOO_SMALL;
    int ret = fedge_server_opt_describe(&o->p, desc, sizeof desc);
    if (ret != FEDGE_OK)
        return ret;
    uint8_t *p = out;
    memcpy(p, STATE_MAGIC, 4);
    fedge_put_u32(p + 4, STATE_FORMAT);
    fedge_put_u64(p + 8, o->steps);
    fedge_put_u32(p + 16, (uint32_t)(o->impl->n_vectors + n_extra));
    fedge_put_u64(p + 20, o->n);
    memset(p + 28, 0, DESC_LEN);
    memcpy(p + 28, desc, strlen(desc));
    p += HEAD_LEN;
    for (size_t v = 0; v < o->impl->n_vectors; v++)
        put_vector(&p, o->impl->vector_names[v], o->vec[v], o->n);
    for (size_t v = 0; v < n_extra; v++)
        put_vector(&p, extra_names[v], extra[v], o->n);
    *len = need;
    return FEDGE_OK;
}

/* A NUL-padded field of width bytes that holds exactly s: the bytes after
 * it must be zero too, so only the blob save writes is accepted. */
static int padded_is(const uint8_t *p, size_t width, const char *s)
{
    size_t n = strlen(s);
    if (n >= width || memcmp(p, s, n) != 0)
        return 0;
    for (size_t i = n; i < width; i++)
        if (p[i] != 0)
            return 0;
    return 1;
}

int fedge_server_opt_load(fedge_server_opt *o, const char *const *extra_names, float *const *extra,
                          size_t n_extra, const uint8_t *blob, size_t len, char *why, size_t whylen)
{
    char desc[DESC_LEN], got[DESC_LEN + 1];
    size_t nv = o->impl->n_vectors;
    int ret = fedge_server_opt_describe(&o->p, desc, sizeof desc);
    if (ret != FEDGE_OK)
        return ret;
    if (!blob || len < HEAD_LEN || memcmp(blob, STATE_MAGIC, 4) != 0 || fedge_get_u32(blob + 4) != STATE_FORMAT) {
        snprintf(why, whylen, "not a server optimiser state (format %d)", STATE_FORMAT);
        return FEDGE_ERR_STRATEGY_STATE;
    }
    memcpy(got, blob + 28, DESC_LEN);
    got[DESC_LEN] = '\0';
    if (!padded_is(blob + 28, DESC_LEN, desc)) {
        snprintf(why, whylen, "the state was saved for %.100s, the run is configured for %.100s", got, desc);
        return FEDGE_ERR_STRATEGY_STATE;
    }
    if (fedge_get_u64(blob + 20) != o->n || fedge_get_u32(blob + 16) != nv + n_extra ||
        len != fedge_server_opt_state_size(o, n_extra)) {
        snprintf(why, whylen, "the state holds %u vectors of %llu values, the run needs %zu of %zu",
                 (unsigned)fedge_get_u32(blob + 16), (unsigned long long)fedge_get_u64(blob + 20), nv + n_extra,
                 o->n);
        return FEDGE_ERR_STRATEGY_STATE;
    }
    const uint8_t *p = blob + HEAD_LEN;
    for (size_t v = 0; v < nv + n_extra; v++, p += NAME_LEN + 4 * o->n) {
        const char *name = v < nv ? o->impl->vector_names[v] : extra_names[v - nv];
        if (!padded_is(p, NAME_LEN, name)) {
            snprintf(why, whylen, "state vector %zu is not '%s'", v, name);
            return FEDGE_ERR_STRATEGY_STATE;
        }
        for (size_t i = 0; i < o->n; i++)
            if (!isfinite(fedge_get_f32(p + NAME_LEN + 4 * i))) {
                snprintf(why, whylen, "state vector '%s' holds a non-finite value", name);
                return FEDGE_ERR_STRATEGY_STATE;
            }
    }
    p = blob + HEAD_LEN;
    for (size_t v = 0; v < nv + n_extra; v++, p += NAME_LEN + 4 * o->n) {
        float *dst = v < nv ? o->vec[v] : extra[v - nv];
        for (size_t i = 0; i < o->n; i++)
            dst[i] = fedge_get_f32(p + NAME_LEN + 4 * i);
    }
    o->steps = fedge_get_u64(blob + 8);
    return FEDGE_OK;
}

/* model.c — layer-list classifiers (dense, conv2d, max-pool, relu, flatten, dropout)
 * over one flat parameter buffer; see model.h for the spec grammar and layout.
 *
 * Activation layouts inside scratch, for a minibatch of B samples:
 *   NCHW  B x (C*H*W), per sample C x H x W: the model input, dense layers, and
 *         everything after a flatten;
 *   NHWC  (B*H*W) x C, one row per pixel: the output of every conv2d. The im2col
 *         matrix is built the same way, one row per output pixel over the whole
 *         minibatch, (B*OH*OW) x (k*k*C) with columns in (ki, kj, c) order, so each
 *         conv is one GEMM with the pixels as its long M dimension (the fast shape
 *         for OpenBLAS) against the weights permuted to HWIO, (k*k*C) x O.
 *   Relu, pool and dropout keep their input's layout; flatten transposes NHWC to
 *   NCHW (the OIHW weights and the flatten order stay the ONNX/PyTorch ones).
 * Scratch, in floats (plan_make):
 *   act_l   B x size_l for each layer that does not work in place (relu reuses its
 *           input's buffer, so does a flatten of an NCHW input); the last dense
 *           layer's buffer holds the logits, then the probabilities, then dL/dZ
 *   g0, g1  B x (largest activation but the last): gradients, ping-pong
 *   col     largest im2col matrix, (B*out_h*out_w) x (k*k*in_c), for the conv layers
 *           but the first; its column gradient reuses it
 *   col0    the im2col matrix of a conv that is layer 0 (no column gradient): kept
 *           from forward to backward instead of being rebuilt
 *   wt      largest conv weight in HWIO order ((k*k*in_c) x out), and its gradient
 *   gemm    the GEMM's packing scratch (fedge_gemm_scratch_bytes of the largest
 *           product, or less: the blocking follows; none with a BLAS)
 *   xin     a u8 input (fedge_model_loss_grad_sliced_u8) as floats, a block at a
 *           time: xin_rows rows (8 in the full layout) for a first dense layer's
 *           forward product, the same floats as column blocks of all rows for its
 *           weight gradient; one sample for a first conv (its im2col is kept); the
 *           whole minibatch only when the first layer is a pool or dropout
 * The gradient buffers are each as large as what backward writes to it. A pass
 * takes the fastest layout its scratch holds (plan_fit): the full one, the
 * GEMM's least blocking, or the lean one (plan_make's PLAN_LEAN: no col/col0,
 * im2col a block of pb output pixels at a time; a conv followed by a ReLU and a
 * 2x2 pool keeps no output, only a tile ct of two rows and tp pooled columns,
 * recomputed once in backward, where each window's gradient goes back into the
 * pool's gradient buffer and its position into a 2-bit mask (mk; the first
 * conv learning in one block: one pooled row's, mkrow); a conv wider than a
 * gradient slice keeps its weights (wt) and weight-gradient sums (acc) in
 * blocks of output channels, the input gradient formed first; blocks of about
 * LEAN_BLOCK floats; a conv whose input is the fused first conv's pool
 * (plan.stream) forms its input gradient in a ring of input rows (ring_off,
 * over the dead activations above its input when it is g0) and hands each
 * complete row to that conv's weight-gradient sums), all with the same sums.
 * Below it, the patch layout (PLAN_PATCH, "the patch layout" below) walks the
 * conv chain in row bands straight into the first dense layer.
 * Nothing is allocated per step; backward recomputes im2col, pool argmax and dropout
 * masks instead of storing them. */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#if !FEDGE_FREESTANDING
#include <stdlib.h>
#endif
#include <string.h>


#include "blas.h"
#include "common.h"
#include "crypto.h"
#include "model.h"

/* ---- spec -------------------------------------------------------------- */

static size_t layer_size(const fedge_layer *l)
{
    return (size_t)l->out_c * (size_t)l->out_h * (size_t)l->out_w;
}

/* Plain decimal in 1..FEDGE_MODEL_MAX_DIM: no sign, no leading zero. */
static int read_num(const char **pp, int *out)
{
    const char *p = *pp;
    if (*p < '1' || *p > '9')
        return 0;
    long v = 0;
    while (*p >= '0' && *p <= '9') {
        v = v * 10 + (*p - '0');
        if (v > FEDGE_MODEL_MAX_DIM)
            return 0;
        p++;
    }
    *pp = p;
    *out = (int)v;
    return 1;
}

typedef struct {
    fedge_model_spec s;
    int c, h, w;      /* current shape */
    int flat;         /* a flatten (or a dense input) happened */
    uint64_t params;
} builder;

static int push(builder *b, fedge_layer l)
{
    if (b->s.n_layers >= FEDGE_MODEL_MAX_LAYERS)
        return 0;
    l.in_c = b->c;
    l.in_h = b->h;
    l.in_w = b->w;
    uint64_t np = 0;
    switch (l.type) {
    case FEDGE_LAYER_DENSE: {
        uint64_t in = (uint64_t)b->c * b->h * b->w;
        l.out_c = l.out;
        l.out_h = l.out_w = 1;
        np = (uint64_t)l.out * (in + 1);
        break;
    }
    case FEDGE_LAYER_CONV2D: {
        if (2 * l.pad > l.k || (int64_t)b->h + 2 * l.pad < l.k || (int64_t)b->w + 2 * l.pad < l.k)
            return 0;
        l.out_c = l.out;
        l.out_h = (b->h + 2 * l.pad - l.k) / l.stride + 1;
        l.out_w = (b->w + 2 * l.pad - l.k) / l.stride + 1;
        np = (uint64_t)l.out * ((uint64_t)b->c * l.k * l.k + 1);
        break;
    }
    case FEDGE_LAYER_MAXPOOL:
        if (b->h < l.k || b->w < l.k)
            return 0;
        l.out_c = b->c;
        l.out_h = (b->h - l.k) / l.stride + 1;
        l.out_w = (b->w - l.k) / l.stride + 1;
        break;
    case FEDGE_LAYER_FLATTEN:
        l.out_c = b->c * b->h * b->w; /* <= FEDGE_MODEL_MAX_ACT, checked when it was made */
        l.out_h = l.out_w = 1;
        break;
    case FEDGE_LAYER_RELU:
    case FEDGE_LAYER_DROPOUT:
        l.out_c = b->c;
        l.out_h = b->h;
        l.out_w = b->w;
        break;
    }
    if ((uint64_t)l.out_c * l.out_h * l.out_w > FEDGE_MODEL_MAX_ACT)
        return 0;
    if (np > 0) {
        b->params += np;
        if (b->params > FEDGE_MODEL_MAX_PARAMS)
            return 0;
        l.w_off = b->s.n_params;
        l.n_params = (size_t)np;
        l.b_off = l.w_off + l.n_params - (size_t)l.out;
        b->s.n_params += l.n_params;
    }
    b->s.layer[b->s.n_layers++] = l;
    b->c = l.out_c;
    b->h = l.out_h;
    b->w = l.out_w;
    return 1;
}

static int push_simple(builder *b, fedge_layer_type type)
{
    fedge_layer l;
    memset(&l, 0, sizeof l);
    l.type = type;
    return push(b, l);
}

/* A dense layer (after the implied flatten), with a ReLU unless it is the output. */
static int push_dense(builder *b, int out, int hidden)
{
    if (!b->flat) {
        if (!push_simple(b, FEDGE_LAYER_FLATTEN))
            return 0;
        b->flat = 1;
    }
    fedge_layer l;
    memset(&l, 0, sizeof l);
    l.type = FEDGE_LAYER_DENSE;
    l.out = out;
    if (!push(b, l))
        return 0;
    return !hidden || push_simple(b, FEDGE_LAYER_RELU);
}

static int parse_dense(const char *p, builder *b)
{
    int dims[FEDGE_MODEL_MAX_LAYERS + 2];
    int n = 0;
    for (;;) {
        if (n >= (int)FEDGE_ARRAY_LEN(dims) || !read_num(&p, &dims[n]))
            return 0;
        n++;
        if (*p == '\0')
            break;
        if (*p++ != '-')
            return 0;
    }
    if (b->s.kind == FEDGE_MODEL_SOFTMAX ? n != 2 : n < 3)
        return 0;
    b->c = dims[0];
    b->h = b->w = 1;
    b->flat = 1; /* a vector input: no flatten layer */
    for (int i = 1; i < n; i++)
        if (!push_dense(b, dims[i], i + 1 < n))
            return 0;
    b->s.classes = dims[n - 1];
    return 1;
}

static int parse_cnn(const char *p, builder *b)
{
    if (!read_num(&p, &b->c) || *p++ != 'x' || !read_num(&p, &b->h) || *p++ != 'x' ||
        !read_num(&p, &b->w))
        return 0;
    if ((uint64_t)b->c * b->h * b->w > FEDGE_MODEL_MAX_ACT)
        return 0;
    for (;;) {
        if (*p++ != '-')
            return 0; /* also: the classes token is missing */
        fedge_layer l;
        memset(&l, 0, sizeof l);
        char t = *p;
        if (t >= '1' && t <= '9') {
            int classes;
            if (!read_num(&p, &classes) || *p != '\0')
                return 0;
            if (!push_dense(b, classes, 0))
                return 0;
            b->s.classes = classes;
            return 1;
        }
        p++;
        if (t == 'c') {
            l.type = FEDGE_LAYER_CONV2D;
            l.stride = 1;
            if (b->flat || !read_num(&p, &l.out) || *p++ != 'k' || !read_num(&p, &l.k))
                return 0;
            if (*p == 's') {
                p++;
                if (!read_num(&p, &l.stride) || l.stride == 1)
                    return 0;
            }
            if (*p == 'p') {
                p++;
                if (!read_num(&p, &l.pad))
                    return 0;
            }
            if (!push(b, l) || !push_simple(b, FEDGE_LAYER_RELU))
                return 0;
        } else if (t == 'p') {
            l.type = FEDGE_LAYER_MAXPOOL;
            if (b->flat || !read_num(&p, &l.k))
                return 0;
            l.stride = l.k;
            if (*p == 's') {
                p++;
                if (!read_num(&p, &l.stride) || l.stride == l.k)
                    return 0;
            }
            if (!push(b, l))
                return 0;
        } else if (t == 'f') {
            int n;
            if (!read_num(&p, &n) || !push_dense(b, n, 1))
                return 0;
        } else if (t == 'd') {
            l.type = FEDGE_LAYER_DROPOUT;
            if (!read_num(&p, &l.rate_pct) || l.rate_pct > 99 || !push(b, l))
                return 0;
        } else {
            return 0;
        }
        if (*p != '-')
            return 0; /* junk inside a token, or the text ends before the classes */
    }
}

int fedge_model_spec_parse(const char *text, fedge_model_spec *out)
{
    if (text == NULL || out == NULL)
        return FEDGE_ERR_INVALID_ARG;
    if (strnlen(text, FEDGE_MODEL_SPEC_MAX) >= FEDGE_MODEL_SPEC_MAX)
        return FEDGE_ERR_MODEL_SPEC;
    builder b;
    memset(&b, 0, sizeof b);
    int ok;
    if (strncmp(text, "softmax:", 8) == 0) {
        b.s.kind = FEDGE_MODEL_SOFTMAX;
        ok = parse_dense(text + 8, &b);
    } else if (strncmp(text, "mlp:", 4) == 0) {
        b.s.kind = FEDGE_MODEL_MLP;
        ok = parse_dense(text + 4, &b);
    } else if (strncmp(text, "cnn:", 4) == 0) {
        b.s.kind = FEDGE_MODEL_CNN;
        ok = parse_cnn(text + 4, &b);
    } else {
        ok = 0;
    }
    if (!ok)
        return FEDGE_ERR_MODEL_SPEC;
    if (b.s.classes < 2 || b.s.classes > FEDGE_MODEL_MAX_CLASSES)
        return FEDGE_ERR_MODEL_SPEC;
    const fedge_layer *first = &b.s.layer[0];
    b.s.in_c = first->in_c;
    b.s.in_h = first->in_h;
    b.s.in_w = first->in_w;
    b.s.input_dim = b.s.in_c * b.s.in_h * b.s.in_w;
    *out = b.s;
    return FEDGE_OK;
}

/* snprintf-free appends (the freestanding core has no stdio): each keeps
 * buf NUL-terminated and fails, as snprintf's truncation did, when the text
 * and its NUL do not fit. */
static int append_str(char *buf, size_t cap, size_t *len, const char *s)
{
    size_t n = strlen(s);
    if (n >= cap - *len)
        return 0;
    memcpy(buf + *len, s, n + 1);
    *len += n;
    return 1;
}

static int append_int(char *buf, size_t cap, size_t *len, const char *prefix, int v)
{
    char digits[16];
    size_t i = sizeof digits;
    unsigned long mag = v < 0 ? 0ul - (unsigned long)v : (unsigned long)v;
    digits[--i] = '\0';
    do {
        digits[--i] = (char)('0' + mag % 10);
        mag /= 10;
    } while (mag > 0);
    if (v < 0)
        digits[--i] = '-';
    return append_str(buf, cap, len, prefix) && append_str(buf, cap, len, digits + i);
}

#define APPEND_S(s)                                    \
    do {                                               \
        if (!append_str(buf, cap, &len, (s)))          \
            return FEDGE_ERR_BUFFER_TOO_SMALL;         \
    } while (0)
#define APPEND_D(prefix, v)                            \
    do {                                               \
        if (!append_int(buf, cap, &len, (prefix), (v))) \
            return FEDGE_ERR_BUFFER_TOO_SMALL;         \
    } while (0)

/* The text a spec stands for, without validating it (any field values are safe). */
static int format_raw(const fedge_model_spec *s, char *buf, size_t cap)
{
    size_t len = 0;
    if (s->n_layers < 1 || s->n_layers > FEDGE_MODEL_MAX_LAYERS)
        return FEDGE_ERR_MODEL_SPEC;
    if (s->kind == FEDGE_MODEL_SOFTMAX || s->kind == FEDGE_MODEL_MLP) {
        APPEND_S(s->kind == FEDGE_MODEL_SOFTMAX ? "softmax" : "mlp");
        APPEND_D(":", s->input_dim);
        for (int i = 0; i < s->n_layers; i++) {
            const fedge_layer *l = &s->layer[i];
            if (l->type == FEDGE_LAYER_DENSE)
                APPEND_D("-", l->out);
            else if (l->type != FEDGE_LAYER_RELU)
                return FEDGE_ERR_MODEL_SPEC;
        }
        return FEDGE_OK;
    }
    if (s->kind != FEDGE_MODEL_CNN)
        return FEDGE_ERR_MODEL_SPEC;
    APPEND_D("cnn:", s->in_c);
    APPEND_D("x", s->in_h);
    APPEND_D("x", s->in_w);
    for (int i = 0; i < s->n_layers; i++) {
        const fedge_layer *l = &s->layer[i];
        switch (l->type) {
        case FEDGE_LAYER_CONV2D:
            APPEND_D("-c", l->out);
            APPEND_D("k", l->k);
            if (l->stride != 1)
                APPEND_D("s", l->stride);
            if (l->pad != 0)
                APPEND_D("p", l->pad);
            break;
        case FEDGE_LAYER_MAXPOOL:
            APPEND_D("-p", l->k);
            if (l->stride != l->k)
                APPEND_D("s", l->stride);
            break;
        case FEDGE_LAYER_DENSE:
            APPEND_D(i + 1 == s->n_layers ? "-" : "-f", l->out);
            break;
        case FEDGE_LAYER_DROPOUT:
            APPEND_D("-d", l->rate_pct);
            break;
        case FEDGE_LAYER_RELU:
        case FEDGE_LAYER_FLATTEN:
            break;
        default:
            return FEDGE_ERR_MODEL_SPEC;
        }
    }
    return FEDGE_OK;
}

static int layer_equal(const fedge_layer *a, const fedge_layer *b)
{
    return a->type == b->type && a->out == b->out && a->k == b->k && a->stride == b->stride &&
           a->pad == b->pad && a->rate_pct == b->rate_pct && a->in_c == b->in_c &&
           a->in_h == b->in_h && a->in_w == b->in_w && a->out_c == b->out_c &&
           a->out_h == b->out_h && a->out_w == b->out_w && a->n_params == b->n_params &&
           (a->n_params == 0 || (a->w_off == b->w_off && a->b_off == b->b_off));
}

/* A spec is valid when it is exactly what parsing its own text gives. */
static int spec_check(const fedge_model_spec *s, char text[FEDGE_MODEL_SPEC_MAX])
{
    fedge_model_spec t;
    if (s == NULL || format_raw(s, text, FEDGE_MODEL_SPEC_MAX) != FEDGE_OK ||
        fedge_model_spec_parse(text, &t) != FEDGE_OK)
        return FEDGE_ERR_MODEL_SPEC;
    if (t.kind != s->kind || t.in_c != s->in_c || t.in_h != s->in_h || t.in_w != s->in_w ||
        t.input_dim != s->input_dim || t.classes != s->classes || t.n_layers != s->n_layers ||
        t.n_params != s->n_params)
        return FEDGE_ERR_MODEL_SPEC;
    for (int i = 0; i < t.n_layers; i++)
        if (!layer_equal(&t.layer[i], &s->layer[i]))
            return FEDGE_ERR_MODEL_SPEC;
    return FEDGE_OK;
}

int fedge_model_spec_format(const fedge_model_spec *spec, char *buf, size_t cap)
{
    if (spec == NULL || buf == NULL || cap == 0)
        return FEDGE_ERR_INVALID_ARG;
    char text[FEDGE_MODEL_SPEC_MAX];
    if (spec_check(spec, text) != FEDGE_OK)
        return FEDGE_ERR_MODEL_SPEC;
    size_t len = strlen(text);
    if (len + 1 > cap)
        return FEDGE_ERR_BUFFER_TOO_SMALL;
    memcpy(buf, text, len + 1);
    return FEDGE_OK;
}

size_t fedge_model_spec_param_count(const fedge_model_spec *spec)
{
    char text[FEDGE_MODEL_SPEC_MAX];
    if (spec_check(spec, text) != FEDGE_OK)
        return 0;
    return spec->n_params;
}

uint32_t fedge_model_spec_id(const fedge_model_spec *spec)
{
    char text[FEDGE_MODEL_SPEC_MAX];
    unsigned char digest[32];
    if (spec_check(spec, text) != FEDGE_OK)
        return 0;
    if (fedge_crypto_sha256(text, strlen(text), digest) != FEDGE_OK)
        return 0;
    return (uint32_t)digest[0] | (uint32_t)digest[1] << 8 | (uint32_t)digest[2] << 16 |
           (uint32_t)digest[3] << 24;
}

int fedge_model_spec_dense_dims(const fedge_model_spec *spec, int dims[FEDGE_MODEL_MAX_LAYERS + 1],
                                int *n_dense)
{
    char text[FEDGE_MODEL_SPEC_MAX];
    if (dims == NULL || n_dense == NULL || spec_check(spec, text) != FEDGE_OK ||
        spec->kind == FEDGE_MODEL_CNN)
        return 0;
    int n = 0;
    dims[0] = spec->input_dim;
    for (int i = 0; i < spec->n_layers; i++)
        if (spec->layer[i].type == FEDGE_LAYER_DENSE)
            dims[++n] = spec->layer[i].out;
    *n_dense = n;
    return 1;
}

int fedge_model_spec_has_dropout(const fedge_model_spec *spec)
{
    if (spec == NULL || spec->n_layers < 0 || spec->n_layers > FEDGE_MODEL_MAX_LAYERS)
        return 0;
    for (int i = 0; i < spec->n_layers; i++)
        if (spec->layer[i].type == FEDGE_LAYER_DROPOUT)
            return 1;
    return 0;
}

const char *fedge_layer_name(fedge_layer_type type)
{
    switch (type) {
    case FEDGE_LAYER_DENSE: return "dense";
    case FEDGE_LAYER_CONV2D: return "conv2d";
    case FEDGE_LAYER_MAXPOOL: return "maxpool";
    case FEDGE_LAYER_RELU: return "relu";
    case FEDGE_LAYER_FLATTEN: return "flatten";
    case FEDGE_LAYER_DROPOUT: return "dropout";
    }
    return "unknown";
}

double fedge_layer_macs(const fedge_layer *l)
{
    if (l->type == FEDGE_LAYER_DENSE)
        return (double)l->in_c * l->in_h * l->in_w * l->out;
    if (l->type == FEDGE_LAYER_CONV2D)
        return (double)l->out_c * l->out_h * l->out_w * l->in_c * l->k * l->k;
    return 0.0;
}

/* ---- model ------------------------------------------------------------- */

int fedge_model_bind(fedge_model *m, const fedge_model_spec *spec, float *params)
{
    if (m == NULL || spec == NULL || params == NULL)
        return FEDGE_ERR_INVALID_ARG;
    char text[FEDGE_MODEL_SPEC_MAX];
    if (spec_check(spec, text) != FEDGE_OK)
        return FEDGE_ERR_MODEL_SPEC;
    memset(m, 0, sizeof *m);
    m->spec = *spec;
    m->n_params = spec->n_params;
    m->params = params;
    return FEDGE_OK;
}

#if !FEDGE_FREESTANDING
int fedge_model_init(fedge_model *m, const fedge_model_spec *spec)
{
    if (m == NULL || spec == NULL)
        return FEDGE_ERR_INVALID_ARG;
    memset(m, 0, sizeof *m);
    char text[FEDGE_MODEL_SPEC_MAX];
    if (spec_check(spec, text) != FEDGE_OK)
        return FEDGE_ERR_MODEL_SPEC;
    float *params = calloc(spec->n_params, sizeof(float));
    if (params == NULL)
        return FEDGE_ERR_NOMEM;
    return fedge_model_bind(m, spec, params);
}

void fedge_model_free(fedge_model *m)
{
    if (m == NULL)
        return;
    free(m->params);
    memset(m, 0, sizeof *m);
}
#endif

int fedge_model_randomize(fedge_model *m, fedge_rng *rng)
{
    if (m == NULL || m->params == NULL || rng == NULL)
        return FEDGE_ERR_INVALID_ARG;
    for (int i = 0; i < m->spec.n_layers; i++) {
        const fedge_layer *l = &m->spec.layer[i];
        if (l->n_params == 0)
            continue;
        int fan_in = l->type == FEDGE_LAYER_CONV2D ? l->in_c * l->k * l->k
                                                   : l->in_c * l->in_h * l->in_w;
        float limit = sqrtf(6.0f / (float)fan_in);
        float *w = m->params + l->w_off;
        for (size_t j = 0; j < l->b_off - l->w_off; j++)
            w[j] = (2.0f * fedge_rng_uniform(rng) - 1.0f) * limit;
        memset(m->params + l->b_off, 0, (size_t)l->out * sizeof(float));
    }
    return FEDGE_OK;
}

/* ---- scratch plan ------------------------------------------------------- */

/* fedge_model_grad_chunk_floats of a checked spec: a conv layer's gradient
 * goes out one or more output channels (K floats each) at a time. */
static size_t grad_chunk_need(const fedge_model_spec *spec)
{
    size_t need = FEDGE_MODEL_GRAD_CHUNK;
    for (int i = 0; i < spec->n_layers; i++) {
        const fedge_layer *l = &spec->layer[i];
        size_t in_size = (size_t)l->in_c * l->in_h * l->in_w;
        size_t w = l->type == FEDGE_LAYER_DENSE    ? in_size /* one row */
                   : l->type == FEDGE_LAYER_CONV2D ? (size_t)l->in_c * l->k * l->k
                                                   : 0;
        if (w > need)
            need = w;
        if ((size_t)l->out > need)
            need = (size_t)l->out;
    }
    if (need > spec->n_params)
        need = spec->n_params;
    /* at least one input row: the edge's accuracy pass converts u8 rows in
     * the slice's buffer (edge/trainer.c) */
    return need > (size_t)spec->input_dim ? need : (size_t)spec->input_dim;
}

typedef struct {
    size_t act_off[FEDGE_MODEL_MAX_LAYERS]; /* each layer's output buffer */
    int nhwc[FEDGE_MODEL_MAX_LAYERS];       /* its layout: NHWC, else NCHW */
    size_t g_off[2];
    size_t col_off;
    size_t col0_off;
    size_t wt_off;
    /* the lean layout (PLAN_LEAN) only: */
    int lean;
    int fused[FEDGE_MODEL_MAX_LAYERS];      /* a conv whose relu and 2x2 pool run with it */
    size_t ct_off, acc_off, wg_off;         /* conv tile; weight-gradient sums; (unused: 0 floats) */
    size_t gb_off;                          /* a conv's bias gradient while its weights go out
                                               (when they and it exceed a slice; else the
                                               slice's last out floats) */
    size_t cb;                              /* a gradient slice's floats (grad_chunk_need) */
    int ob[FEDGE_MODEL_MAX_LAYERS];         /* a conv's output channels per weight block */
    int kb[FEDGE_MODEL_MAX_LAYERS];         /* its im2col columns per input-gradient block */
    int pb[FEDGE_MODEL_MAX_LAYERS];         /* its output pixels per im2col block (one row's at most) */
    int stream[FEDGE_MODEL_MAX_LAYERS];     /* 1 + the first conv its input gradient streams into, or 0 */
    int tp[FEDGE_MODEL_MAX_LAYERS];         /* a fused conv's pooled columns per tile */
    int mkrow[FEDGE_MODEL_MAX_LAYERS];      /* a fused conv's window positions: one pooled row's */
    size_t mk_off, mkrow_off;               /* the whole map's (2 bits a pooled element); a row's */
    size_t ring_dead, ring_off;             /* the dead activations a streamed conv's ring may take; its ring */
    int ring_over;                          /* the ring starts ring_dead floats before g_off[0] */
    size_t gemm_off;
    size_t gemm;            /* floats at gemm_off: the GEMM's packing (its blocking follows) */
    size_t xin_off;
    size_t xin;             /* floats at xin_off */
    int xin_rows;           /* u8 rows a first dense layer converts at once */
    size_t total;
    /* the patch layout (PLAN_PATCH) only, model.c's "patch-based training": */
    int patch;
    int pF, pfc;            /* the flatten; the chain's first conv */
    int pcut;               /* the map kept whole between the two segments, or -1 (one) */
    int pnseg;              /* segments of the chain, each walked in bands of its last map */
    int pj0[2], pj1[2];     /* a segment's first and last layer */
    int pL[2];              /* its last conv (its weights in blocks), or -1 */
    int pbh[2], pob[2], pT[2]; /* its last map's rows per band; pL's channels per block; bands */
    int pfown[FEDGE_MODEL_MAX_LAYERS + 1]; /* map j (index j + 1, 0: the input): the map whose
                                              band buffer holds it (a relu: its conv's) */
    int pwown[FEDGE_MODEL_MAX_LAYERS];     /* map j's gradient window's owner (relu, dropout:
                                              the map below) */
    int pfwhole[FEDGE_MODEL_MAX_LAYERS + 1], pwwhole[FEDGE_MODEL_MAX_LAYERS]; /* the cut's: whole */
    int pfrows[FEDGE_MODEL_MAX_LAYERS + 1], pwrows[FEDGE_MODEL_MAX_LAYERS];
    size_t pf_off[FEDGE_MODEL_MAX_LAYERS + 1], pw_off[FEDGE_MODEL_MAX_LAYERS];
    size_t ptail_off[FEDGE_MODEL_MAX_LAYERS], ptg_off[2];
    size_t plow_off[FEDGE_MODEL_MAX_LAYERS]; /* a conv below its segment's pL: its whole gradient */
    size_t pacc_off, pbias_off;             /* a pL: one block's weight sums; its bias sums */
    int pfin[FEDGE_MODEL_MAX_LAYERS];       /* a conv, or its relu, run inside pool pfin (else 0):
                                               its map has no band buffer nor window */
    int pfcv[FEDGE_MODEL_MAX_LAYERS];       /* a pool: 1 + the conv run inside it, or 0 */
    size_t prow_off;                        /* a pool window's conv rows of one channel */
} scratch_plan;

/* Rows of a u8 input converted at once for a first dense layer's forward
 * product. Each row's sums are the whole input's, so the bits are unchanged
 * where the GEMM computes a row block as it does the whole: the portable
 * kernel always; OpenBLAS 0.3.21 (SkylakeX) from 8 rows up (4 rows of a
 * 200-wide product take another kernel and round otherwise). */
#ifdef FEDGE_MODEL_XIN_ROWS /* the edge's smaller layouts and a microcontroller convert fewer */
#define XIN_ROWS FEDGE_MODEL_XIN_ROWS
#else
#define XIN_ROWS 8
#endif
#if FEDGE_FREESTANDING /* a microcontroller (mcu/): every layout converts XIN_ROWS */
#define XIN_FULL_ROWS XIN_ROWS
#else
#define XIN_FULL_ROWS 8 /* the full layout's (PLAN_FULL) */
#endif

/* The packing scratch of one product: the full blocking's, or (g_min) the
 * least the portable kernel takes (fedge_gemm_scratch_min_bytes). */
static size_t gemm_floats_of(int g_min, size_t M, size_t N, size_t K)
{
    if (M > INT_MAX || N > INT_MAX || K > INT_MAX)
        return 0;
    size_t b = g_min ? fedge_gemm_scratch_min_bytes((int)M, (int)N, (int)K)
                     : fedge_gemm_scratch_bytes((int)M, (int)N, (int)K);
    return (b + sizeof(float) - 1) / sizeof(float);
}

static size_t max3(size_t a, size_t b, size_t c)
{
    size_t m = a > b ? a : b;
    return m > c ? m : c;
}

/* The xin block of a first layer l over B rows (see above). */
static size_t xin_floats(const fedge_layer *l, size_t B, size_t xin_rows)
{
    size_t in = (size_t)l->in_c * l->in_h * l->in_w;
    switch (l->type) {
    case FEDGE_LAYER_DENSE: {
        size_t f = in * (B < xin_rows ? B : xin_rows);
        return f > B ? f : B;
    }
    case FEDGE_LAYER_CONV2D:
        return in;
    case FEDGE_LAYER_FLATTEN:
        return 0;
    default:
        return B * in;
    }
}

/* Largest float count a plan may reach: every buffer index stays far from overflow,
 * and every GEMM dimension fits an int. */
#if SIZE_MAX > 0xFFFFFFFFu
#define PLAN_MAX_FLOATS ((size_t)1 << 40)
#else /* 32-bit targets (armhf): a quarter of the address space in bytes */
#define PLAN_MAX_FLOATS (SIZE_MAX / 16)
#endif

/* Scratch layouts, fastest first: the GEMM's full blocking; its least (then
 * every float up to the full size goes to the GEMM); the lean layout, which
 * also keeps no im2col matrix (one output row at a time, recomputed in
 * backward) and no output of a conv followed by a ReLU and a 2x2 pool (it
 * runs two rows at a time and is recomputed in backward; the pool writes
 * NCHW when a flatten follows, so the flatten copies nothing). */
enum { PLAN_FULL = 0, PLAN_MIN = 1, PLAN_LEAN = 2, PLAN_PATCH = 3 };

/* The lean layout's blocks, in floats: a conv's im2col in blocks of output
 * pixels, and, when its weights exceed a gradient slice, its weights and
 * weight-gradient sums in blocks of output channels (the input gradient's
 * in blocks of im2col columns), each of about this many floats (at least
 * one pixel, channel or column). */
#ifndef FEDGE_MODEL_LEAN_BLOCK
#define FEDGE_MODEL_LEAN_BLOCK 512
#endif
#define LEAN_BLOCK ((size_t)FEDGE_MODEL_LEAN_BLOCK)

static int lean_fuses(const fedge_model_spec *s, int i)
{
    const fedge_layer *l = &s->layer[i];
    return l->type == FEDGE_LAYER_CONV2D && i + 3 < s->n_layers &&
           s->layer[i + 1].type == FEDGE_LAYER_RELU && s->layer[i + 2].type == FEDGE_LAYER_MAXPOOL &&
           s->layer[i + 2].k == 2 && s->layer[i + 2].stride == 2 && l->out_h % 2 == 0 &&
           l->out_w % 2 == 0;
}

/* The input rows of conv l a ring of its input gradient holds: those one
 * output row adds to. */
static size_t ring_rows(const fedge_layer *l)
{
    return (size_t)(l->k < l->in_h ? l->k : l->in_h);
}

/* The two gradient buffers, each as large as the input gradients the
 * backward pass writes into it (it alternates: a layer that works in place
 * keeps the buffer). */
static void grad_sizes(const fedge_model_spec *s, scratch_plan *p, size_t B, size_t g[2])
{
    int first_param = 0, cur = -1; /* the last layer's gradient is in its own buffer */
    while (s->layer[first_param].n_params == 0)
        first_param++;
    g[0] = g[1] = 0;
    for (int i = s->n_layers - 1; i > first_param; i--) {
        const fedge_layer *l = &s->layer[i];
        size_t in = B * (size_t)l->in_c * l->in_h * l->in_w;
        int in_nhwc = p->nhwc[i - 1];
        if (l->type == FEDGE_LAYER_RELU || l->type == FEDGE_LAYER_DROPOUT ||
            (l->type == FEDGE_LAYER_FLATTEN && !in_nhwc))
            continue;
        if (p->lean && l->type == FEDGE_LAYER_MAXPOOL && p->fused[i - 2]) {
            i -= 2; /* the conv's input gradient */
            if (i <= first_param)
                break;
            l = &s->layer[i];
            in = B * (size_t)l->in_c * l->in_h * l->in_w;
        }
        int streamed = p->lean && l->type == FEDGE_LAYER_CONV2D && p->stream[i];
        cur = cur == 0 ? 1 : 0;
        if (streamed) { /* a ring of input rows; nothing below takes a buffer */
            in = ring_rows(l) * l->in_w * l->in_c;
            /* in buffer 0 the ring starts over the activations above the conv's
             * input, dead by then, and runs on into buffer 0 (right after them) */
            p->ring_over = cur == 0;
            if (p->ring_over)
                in = in > p->ring_dead ? in - p->ring_dead : 0;
        }
        if (in > g[cur])
            g[cur] = in;
        if (streamed)
            break;
    }
}

static int plan_patch(const fedge_model_spec *s, int batch, int cut, int bh, int blocks,
                      scratch_plan *p);
static int patch_least_cut(const fedge_model_spec *s, int batch);

static int plan_make(const fedge_model_spec *s, int batch, int mode, scratch_plan *p)
{
#define gemm_floats(M, N, K) gemm_floats_of(mode != PLAN_FULL, M, N, K)
    if (batch < 1)
        return FEDGE_ERR_INVALID_ARG;
    if (mode == PLAN_PATCH) { /* the least: one row per band */
        int cut = patch_least_cut(s, batch);
        return cut < -1 ? FEDGE_ERR_INVALID_ARG : plan_patch(s, batch, cut, 1, 1, p);
    }
    memset(p, 0, sizeof *p);
    p->lean = mode == PLAN_LEAN;
    p->cb = grad_chunk_need(s);
    const size_t xr = mode == PLAN_FULL ? XIN_FULL_ROWS : XIN_ROWS;
    p->xin_rows = (int)xr;
    size_t off = 0, col_max = 0, col0 = 0, wt_max = 0, gemm_max = 0, ct = 0, acc = 0, wg = 0;
    size_t gb_max = 0;
    size_t B = (size_t)batch;
    int owns[FEDGE_MODEL_MAX_LAYERS];
    int nhwc = 0;
    for (int i = 0; i < s->n_layers; i++) {
        const fedge_layer *l = &s->layer[i];
        size_t out = layer_size(l);
        if (B * out > (size_t)INT_MAX)
            return FEDGE_ERR_INVALID_ARG;
        int own = 1;
        if (l->type == FEDGE_LAYER_RELU)
            own = 0;
        else if (l->type == FEDGE_LAYER_FLATTEN && !nhwc && i > 0)
            own = 0;
        if (l->type == FEDGE_LAYER_CONV2D) {
            nhwc = 1;
            size_t cols = (size_t)l->in_c * (size_t)l->k * (size_t)l->k;
            size_t rows = B * (size_t)l->out_h * (size_t)l->out_w;
            size_t O = (size_t)l->out, ow = (size_t)l->out_w;
            if (rows * cols > PLAN_MAX_FLOATS)
                return FEDGE_ERR_INVALID_ARG;
            if (!p->lean && cols * O > wt_max)
                wt_max = cols * O;
            if (p->lean) {
                /* one output row of im2col; forward and input-gradient products per
                 * row, the weights in blocks of at most one gradient slice (whole
                 * when the layer is no larger) */
                size_t cb = grad_chunk_need(s), ob = O, kb = cols, wt = O * cols;
                if (O * cols > cb) {
                    ob = LEAN_BLOCK / cols ? LEAN_BLOCK / cols : 1;
                    kb = LEAN_BLOCK / O ? LEAN_BLOCK / O : 1;
                    wt = ob * cols > kb * O ? ob * cols : kb * O;
                }
                size_t pb = LEAN_BLOCK / cols ? LEAN_BLOCK / cols : 1;
                pb = pb < ow ? pb : ow;
                p->ob[i] = (int)ob;
                p->kb[i] = (int)kb;
                p->pb[i] = (int)pb;
                wt_max = wt_max > wt ? wt_max : wt;
                if (pb * cols > col_max)
                    col_max = pb * cols;
                acc = acc > ob * cols ? acc : ob * cols;
                if (ob * cols + O > cb) /* else the bias sums wait in the slice's tail */
                    gb_max = gb_max > O ? gb_max : O;
                gemm_max = max3(gemm_max, gemm_floats(pb, ob, cols), gemm_floats(pb, kb, O));
                int j = i - 3, fp = 0;
                while (s->layer[fp].n_params == 0)
                    fp++;
                if (j >= 0 && j == fp && p->fused[j] && p->ob[j] == s->layer[j].out &&
                    p->nhwc[i - 1])
                    p->stream[i] = j + 1; /* its input gradient goes row by row into j's */
                if (lean_fuses(s, i)) {
                    size_t tp = LEAN_BLOCK / (8 * O) ? LEAN_BLOCK / (8 * O) : 1, tile;
                    tp = tp < ow / 2 ? tp : ow / 2;
                    tile = 4 * tp * O; /* two rows of 2 tp pixels */
                    p->fused[i] = 1;
                    p->tp[i] = (int)tp;
                    ct = ct > tile ? ct : tile;
                    own = 0;
                }
            } else {
                if (i == 0)
                    col0 = rows * cols;
                else if (rows * cols > col_max)
                    col_max = rows * cols;
                size_t f = max3(gemm_floats(rows, O, cols), gemm_floats(O, cols, rows),
                                gemm_floats(cols, O, rows));
                gemm_max = max3(gemm_max, f, gemm_floats(rows, cols, O));
            }
        } else if (l->type == FEDGE_LAYER_DENSE) {
            nhwc = 0;
            size_t in = (size_t)l->in_c * l->in_h * l->in_w, O = (size_t)l->out;
            size_t f = max3(gemm_floats(B, O, in), gemm_floats(B, in, O), gemm_floats(O, in, B));
            gemm_max = max3(gemm_max, f, gemm_floats(B < xr ? B : xr, O, in));
        } else if (l->type == FEDGE_LAYER_FLATTEN) {
            nhwc = 0;
        } else if (p->lean && l->type == FEDGE_LAYER_RELU && p->fused[i - 1]) {
            own = 0;
        } else if (p->lean && l->type == FEDGE_LAYER_MAXPOOL && i >= 2 && p->fused[i - 2] &&
                   s->layer[i + 1].type == FEDGE_LAYER_FLATTEN) {
            nhwc = 0; /* written NCHW: the flatten is then no copy */
        }
        p->nhwc[i] = nhwc;
        owns[i] = own;
        if (own) {
            p->act_off[i] = off;
            off += B * out;
        } else {
            p->act_off[i] = i > 0 ? p->act_off[i - 1] : 0; /* a relu never comes first */
        }
    }
    size_t g[2];
    for (int i = 0; i < s->n_layers; i++) /* what lies above a streamed conv's input */
        if (p->stream[i]) {
            size_t lo = off;
            for (int j = i; j < s->n_layers; j++)
                if (owns[j] && p->act_off[j] < lo)
                    lo = p->act_off[j];
            p->ring_dead = off - lo;
        }
    grad_sizes(s, p, B, g);
    p->g_off[0] = off;
    p->g_off[1] = off + g[0];
    p->col_off = off + g[0] + g[1];
    p->ring_off = p->ring_over ? off - p->ring_dead : p->g_off[1];
    p->col0_off = p->col_off + col_max;
    p->wt_off = p->col0_off + col0;
    size_t mk = 0, mkrow = 0; /* floats */
    int fp = 0;
    while (s->layer[fp].n_params == 0)
        fp++;
    /* the first conv learning in one block takes its output gradient a
     * pooled row at a time (recomputed for the row's first half) */
    p->mkrow[fp] = p->fused[fp] && p->ob[fp] == s->layer[fp].out;
    for (int i = 0; i < s->n_layers; i++) {
        if (!p->fused[i])
            continue;
        const fedge_layer *pl = &s->layer[i + 2];
        size_t row = (size_t)pl->out_w * pl->in_c, f;
        f = ((p->mkrow[i] ? row : B * pl->out_h * row) + 15) / 16;
        if (p->mkrow[i])
            mkrow = mkrow > f ? mkrow : f;
        else
            mk = mk > f ? mk : f;
    }
    p->mk_off = p->wt_off + wt_max;
    p->mkrow_off = p->mk_off + mk;
    p->ct_off = p->mkrow_off + mkrow;
    p->acc_off = p->ct_off + ct;
    p->wg_off = p->acc_off + acc;
    p->gb_off = p->wg_off + wg;
    p->gemm_off = p->gb_off + gb_max;
    p->gemm = gemm_max;
    p->xin_off = p->gemm_off + gemm_max;
    p->xin = xin_floats(&s->layer[0], B, xr);
    if (p->lean && s->layer[0].type == FEDGE_LAYER_CONV2D && s->layer[0].in_c == 1)
        p->xin = (size_t)s->layer[0].k * s->layer[0].in_w; /* the rows one output row reads */
    p->total = p->xin_off + p->xin;
    if (p->total > PLAN_MAX_FLOATS)
        return FEDGE_ERR_INVALID_ARG;
    return FEDGE_OK;
#undef gemm_floats
}

/* ---- the patch layout (PLAN_PATCH): the conv chain in row bands ---------- */

/* Patch-based training (the depth-first tiling of MCUNetV2, Lin et al. 2021,
 * here for backward too): the chain of convs, pools, relus and dropouts
 * before the flatten runs in bands of pbh rows of its last map. Forward, a
 * band's receptive field is recomputed through the chain from the input rows
 * and its last-map rows go straight into the first dense layer's sums (only
 * that layer's outputs, B x out, are kept). Backward walks the same bands:
 * each recomputes its forward rows, forms the last map's gradient from the
 * dense layer's (dz x W), hands that dense layer's weight gradient over for
 * the band's columns, and runs the chain's backward on the rows whose
 * gradient is complete; the rows a later band still adds to stay in a window
 * per map (the halo) that moves down with the bands. ReLU masks, pool argmax
 * and dropout masks are recomputed, never stored. The convs below the last
 * one keep whole weight-gradient sums (they are read by every band); the
 * last conv's go in blocks of pob output channels, one sweep of bands per
 * block (a block's maps above it need no other channel), after a sweep that
 * forms the gradient below it. A conv followed by a (relu and a) max pool
 * whose windows do not overlap runs inside the pool (patch_fused_pool): no
 * band buffer nor window for its map. Scratch: the tail's activations (B x
 * each width after the flatten) and two gradient buffers, the cut map and
 * its gradient whole, then over the same floats for either segment a band
 * buffer per map (B x C x rows x W), a window per map that has a gradient
 * and the lower convs' sums; one block of the last conv's sums, its bias
 * sums, and a pool window's conv rows of one channel. */

typedef struct {
    int lo, hi;
} rows_t;

static rows_t rows_hull(rows_t a, rows_t b)
{
    if (a.lo >= a.hi)
        return b;
    if (b.lo >= b.hi)
        return a;
    rows_t r = {a.lo < b.lo ? a.lo : b.lo, a.hi > b.hi ? a.hi : b.hi};
    return r;
}

static int rows_windowed(const fedge_layer *l)
{
    return l->type == FEDGE_LAYER_CONV2D || l->type == FEDGE_LAYER_MAXPOOL;
}

/* The input rows layer l reads for its output rows o. */
static rows_t rows_in(const fedge_layer *l, rows_t o)
{
    rows_t r = {0, 0};
    if (o.lo >= o.hi)
        return r;
    if (!rows_windowed(l))
        return o;
    int pad = l->type == FEDGE_LAYER_CONV2D ? l->pad : 0;
    r.lo = o.lo * l->stride - pad;
    r.hi = (o.hi - 1) * l->stride - pad + l->k;
    r.lo = r.lo < 0 ? 0 : r.lo;
    r.hi = r.hi > l->in_h ? l->in_h : r.hi;
    return r;
}

/* The input rows whose gradient is complete once output rows [0, d) gave theirs. */
static int rows_done(const fedge_layer *l, int d)
{
    if (!rows_windowed(l))
        return d;
    if (d >= l->out_h)
        return l->in_h;
    int v = d * l->stride - (l->type == FEDGE_LAYER_CONV2D ? l->pad : 0);
    return v < 0 ? 0 : v > l->in_h ? l->in_h : v;
}

/* d[j + 1]: the rows of map j (the output of layer j; -1: the input) of
 * segment g (maps pj0 - 1 .. pj1) whose gradient is complete after band t
 * (t < 0: none). */
static void band_done(const fedge_model_spec *s, const scratch_plan *p, int g, int t, int *d)
{
    const int j0 = p->pj0[g], j1 = p->pj1[g], H = s->layer[j1].out_h;
    for (int j = j0; j <= j1 + 1; j++)
        d[j] = 0;
    if (t < 0)
        return;
    d[j1 + 1] = (t + 1) * p->pbh[g] < H ? (t + 1) * p->pbh[g] : H;
    for (int j = j1; j >= j0; j--)
        d[j] = rows_done(&s->layer[j], d[j + 1]);
}

/* Band t of segment g: dp, dc the complete rows before and after it
 * (band_done); fr[j + 1] the rows of map j its forward computes: those the
 * band's last-map rows read, and with bw those the band's backward reads
 * (its complete rows). */
static void band_rows(const fedge_model_spec *s, const scratch_plan *p, int g, int t, int bw,
                      int *dp, int *dc, rows_t *fr)
{
    const int j0 = p->pj0[g], j1 = p->pj1[g];
    band_done(s, p, g, t - 1, dp);
    band_done(s, p, g, t, dc);
    fr[j1 + 1].lo = t * p->pbh[g];
    fr[j1 + 1].hi = dc[j1 + 1];
    for (int j = j1; j >= j0; j--) {
        rows_t r = rows_in(&s->layer[j], fr[j + 1]);
        if (bw && j - 1 >= p->pfc && !p->pfin[j - 1]) {
            rows_t f = {dp[j], dc[j]};
            r = rows_hull(r, f);
        }
        fr[j] = r;
    }
}

/* Output channels per block of a segment's last conv: about `blocks`
 * LEAN_BLOCKs of weight sums when each block's walk recomputes the chain
 * from the input (the least layout: one; a larger budget: four), one when
 * it starts at a map kept whole (a walk of the upper segment costs little). */
static int patch_ob(const fedge_layer *l, int from_input, int blocks)
{
    size_t K = (size_t)l->in_c * l->k * l->k, ob = (from_input ? (size_t)blocks : 1) * LEAN_BLOCK / K;
    return ob < 1 ? 1 : ob > (size_t)l->out ? l->out : (int)ob;
}

/* A map that may be kept whole between two segments: a relu's or a pool's
 * output (a dropout's gradient is scaled in place: not twice), above the
 * first conv, below the last map. */
static int patch_cuts(const fedge_model_spec *s, int F, int fc, int X)
{
    fedge_layer_type t = s->layer[X].type;
    return X > fc && X < F - 1 && (t == FEDGE_LAYER_RELU || t == FEDGE_LAYER_MAXPOOL);
}

/* The pool conv j runs inside (conv, an optional relu, a max pool before
 * the flatten F whose windows do not overlap), or 0: each pooled value is
 * the max of its window's conv values computed from the conv's input rows,
 * and in backward the window is computed again and its gradient (ReLU' at
 * the maximum) goes straight into the conv's weight sums and input
 * gradient, so neither the conv's map nor its gradient is ever held.
 * Overlapping windows would compute a conv value more than once. */
static int relu_follows(const fedge_model_spec *s, int i);

static int patch_fused_pool(const fedge_model_spec *s, int F, int j)
{
    int q = j + 1 + relu_follows(s, j);
    return s->layer[j].type == FEDGE_LAYER_CONV2D && q < F &&
                   s->layer[q].type == FEDGE_LAYER_MAXPOOL && s->layer[q].k <= s->layer[q].stride
               ? q
               : 0;
}

/* The patch layout: the chain in one segment (cut -1) or two with map cut
 * kept whole between them, bands of bh rows, the last convs' weights in
 * blocks (whole with full). FEDGE_ERR_INVALID_ARG for a spec without a conv
 * chain into a dense layer, or a cut that is not patch_cuts. */
static int plan_patch(const fedge_model_spec *s, int batch, int cut, int bh, int blocks,
                      scratch_plan *p)
{
    memset(p, 0, sizeof *p);
    int F = 0, fc = -1;
    if (batch < 1 || s->kind != FEDGE_MODEL_CNN)
        return FEDGE_ERR_INVALID_ARG;
    while (F < s->n_layers && s->layer[F].type != FEDGE_LAYER_FLATTEN &&
           s->layer[F].type != FEDGE_LAYER_DENSE)
        F++;
    if (F == 0 || F + 1 >= s->n_layers || s->layer[F].type != FEDGE_LAYER_FLATTEN ||
        s->layer[F + 1].type != FEDGE_LAYER_DENSE)
        return FEDGE_ERR_INVALID_ARG;
    for (int j = 0; j < F && fc < 0; j++)
        if (s->layer[j].type == FEDGE_LAYER_CONV2D)
            fc = j;
    if (fc < 0 || (cut >= 0 && !patch_cuts(s, F, fc, cut)))
        return FEDGE_ERR_INVALID_ARG;
    for (int j = fc; j < F; j++) {
        int q = patch_fused_pool(s, F, j);
        if (q == 0)
            continue;
        if (cut >= j && cut < q)
            return FEDGE_ERR_INVALID_ARG; /* no cut inside a pool's conv */
        for (int i = j; i < q; i++)
            p->pfin[i] = q;
        p->pfcv[q] = j + 1;
    }
    const size_t B = (size_t)batch;
    for (int i = 0; i < s->n_layers; i++)
        if (B * layer_size(&s->layer[i]) > (size_t)INT_MAX)
            return FEDGE_ERR_INVALID_ARG;
    p->patch = 1;
    p->cb = grad_chunk_need(s);
    p->pF = F;
    p->pfc = fc;
    p->pcut = cut;
    p->pnseg = cut < 0 ? 1 : 2;
    p->pj0[0] = 0;
    p->pj1[0] = cut < 0 ? F - 1 : cut;
    p->pj0[1] = cut + 1;
    p->pj1[1] = F - 1;
    for (int g = 0; g < p->pnseg; g++) {
        const int H = s->layer[p->pj1[g]].out_h;
        p->pL[g] = -1;
        for (int j = p->pj0[g]; j <= p->pj1[g]; j++)
            if (s->layer[j].type == FEDGE_LAYER_CONV2D)
                p->pL[g] = j;
        p->pbh[g] = bh < 1 ? 1 : bh > H ? H : bh;
        p->pT[g] = (H + p->pbh[g] - 1) / p->pbh[g];
        p->pob[g] = p->pL[g] < 0 ? 0
                    : blocks < 0 ? s->layer[p->pL[g]].out
                                 : patch_ob(&s->layer[p->pL[g]], p->pj0[g] == 0, blocks);
    }
    p->pfown[0] = 0;
    for (int j = 0; j < F; j++) {
        fedge_layer_type t = s->layer[j].type;
        p->pfown[j + 1] = t == FEDGE_LAYER_RELU ? p->pfown[j] : j + 1;
        p->pwown[j] = j > fc && (t == FEDGE_LAYER_RELU || t == FEDGE_LAYER_DROPOUT) ? p->pwown[j - 1]
                                                                                     : j;
    }
    if (cut >= 0) {
        p->pfwhole[p->pfown[cut + 1]] = 1;
        p->pwwhole[p->pwown[cut]] = 1;
        p->pfrows[p->pfown[cut + 1]] = s->layer[cut].out_h;
        p->pwrows[p->pwown[cut]] = s->layer[cut].out_h;
    }
    int dp[FEDGE_MODEL_MAX_LAYERS + 1], dc[FEDGE_MODEL_MAX_LAYERS + 1];
    rows_t fr[FEDGE_MODEL_MAX_LAYERS + 1];
    for (int g = 0; g < p->pnseg; g++)
        for (int t = 0; t < p->pT[g]; t++) {
            const int j0 = p->pj0[g], j1 = p->pj1[g];
            band_rows(s, p, g, t, 1, dp, dc, fr);
            for (int j = j0 - 1; j <= j1; j++) {
                int n = fr[j + 1].hi - fr[j + 1].lo, o = p->pfown[j + 1];
                if (j >= 0 && p->pfin[j])
                    continue;
                if (!p->pfwhole[o] && n > p->pfrows[o])
                    p->pfrows[o] = n;
            }
            for (int j = j0 > fc ? j0 : fc; j <= j1; j++) {
                if (p->pfin[j])
                    continue;
                rows_t done = {0, j < j1 ? dc[j + 2] : 0};
                int touch = j == j1 ? dc[j1 + 1] : rows_in(&s->layer[j + 1], done).hi;
                if (j < j1 && p->pfin[j + 1]) { /* a pool's conv: whole windows of its rows */
                    const int q = p->pfin[j + 1];
                    rows_t pd = {0, dc[q + 1]};
                    touch = rows_in(&s->layer[j + 1], rows_in(&s->layer[q], pd)).hi;
                }
                touch = touch < dc[j + 1] ? dc[j + 1] : touch;
                int n = touch - dp[j + 1], o = p->pwown[j];
                if (!p->pwwhole[o] && n > p->pwrows[o])
                    p->pwrows[o] = n;
            }
        }
    size_t off = 0, tg = 0;
    for (int i = F + 1; i < s->n_layers; i++) {
        const fedge_layer *l = &s->layer[i];
        if (l->type == FEDGE_LAYER_RELU) {
            p->ptail_off[i] = p->ptail_off[i - 1];
            continue;
        }
        p->ptail_off[i] = off;
        off += B * layer_size(l);
        size_t in = B * (size_t)l->in_c * l->in_h * l->in_w;
        if (l->type == FEDGE_LAYER_DENSE && i > F + 1 && in > tg)
            tg = in;
    }
    p->ptg_off[0] = off;
    p->ptg_off[1] = off + tg;
    off += 2 * tg;
    /* the cut's whole maps, then each segment's band buffers, windows and
     * lower convs' sums over the same floats (a segment's walks are done
     * before the other's start) */
    for (int whole = 1; whole >= 0; whole--) {
        size_t top = off;
        for (int g = 0; g < (whole ? 1 : p->pnseg); g++) {
            size_t at = off;
            for (int j = whole || g == 0 ? -1 : p->pj0[g]; j <= (whole ? F - 1 : p->pj1[g]); j++) {
                if (p->pfown[j + 1] != j + 1 || p->pfwhole[j + 1] != whole)
                    continue;
                size_t C = (size_t)(j < 0 ? s->in_c : s->layer[j].out_c);
                size_t W = (size_t)(j < 0 ? s->in_w : s->layer[j].out_w);
                p->pf_off[j + 1] = at;
                at += B * C * (size_t)p->pfrows[j + 1] * W;
            }
            for (int j = whole || g == 0 ? fc : (p->pj0[g] > fc ? p->pj0[g] : fc);
                 j <= (whole ? F - 1 : p->pj1[g]); j++) {
                if (p->pwown[j] != j || p->pwwhole[j] != whole)
                    continue;
                p->pw_off[j] = at;
                at += B * (size_t)s->layer[j].out_c * (size_t)p->pwrows[j] *
                      (size_t)s->layer[j].out_w;
            }
            for (int j = p->pj0[g]; !whole && j < p->pL[g]; j++)
                if (s->layer[j].type == FEDGE_LAYER_CONV2D) {
                    p->plow_off[j] = at;
                    at += s->layer[j].n_params;
                }
            top = at > top ? at : top;
        }
        off = top;
    }
    size_t acc = 0, bias = 0;
    for (int g = 0; g < p->pnseg; g++) {
        if (p->pL[g] >= 0) {
            const fedge_layer *l = &s->layer[p->pL[g]];
            size_t a = (size_t)p->pob[g] * l->in_c * l->k * l->k;
            acc = acc > a ? acc : a;
            bias = bias > (size_t)l->out ? bias : (size_t)l->out;
        }
    }
    size_t rowbuf = 0;
    for (int q = 0; q < F; q++)
        if (p->pfcv[q]) {
            size_t n = (size_t)s->layer[q].k * (size_t)s->layer[p->pfcv[q] - 1].out_w;
            rowbuf = n > rowbuf ? n : rowbuf;
        }
    p->pacc_off = off;
    p->pbias_off = off + acc;
    p->prow_off = off + acc + bias;
    p->total = off + acc + bias + rowbuf;
    return p->total > PLAN_MAX_FLOATS ? FEDGE_ERR_INVALID_ARG : FEDGE_OK;
}

/* The least gradient slice a patch pass takes: one input row (the edge's
 * accuracy pass converts u8 rows in it), one conv output channel's weights,
 * one row of a dense layer after the first, any layer's biases; the first
 * dense layer's weight gradient goes out in pieces of its band's columns. */
static size_t patch_chunk_need(const fedge_model_spec *s, const scratch_plan *p)
{
    size_t need = (size_t)s->input_dim;
    for (int i = 0; i < s->n_layers; i++) {
        const fedge_layer *l = &s->layer[i];
        size_t in = (size_t)l->in_c * l->in_h * l->in_w;
        size_t w = l->type == FEDGE_LAYER_CONV2D                  ? (size_t)l->in_c * l->k * l->k
                   : l->type == FEDGE_LAYER_DENSE && i > p->pF + 1 ? in
                                                                   : 0;
        need = w > need ? w : need;
        need = (size_t)l->out > need ? (size_t)l->out : need;
    }
    return need;
}

/* The least patch layout (one row per band, blocks) over the cuts; -2: none. */
static int patch_least_cut(const fedge_model_spec *s, int batch)
{
    scratch_plan q;
    size_t best = SIZE_MAX;
    int cut = -2;
    for (int X = -1; X < s->n_layers; X++)
        if (plan_patch(s, batch, X, 1, 1, &q) == FEDGE_OK && q.total < best) {
            best = q.total;
            cut = X;
        }
    return cut;
}

/* The patch layout within have floats: the least layout's cut; whole blocks
 * of the last convs when they fit, else blocks of four LEAN_BLOCKs, else
 * one; and the most rows per band that fit. */
static int plan_patch_fit(const fedge_model_spec *s, int batch, size_t have, scratch_plan *p)
{
    static const int blocks[] = {-1, 4, 1};
    int cut = patch_least_cut(s, batch);
    if (cut < -1)
        return FEDGE_ERR_BUFFER_TOO_SMALL;
    for (size_t i = 0; i < sizeof blocks / sizeof blocks[0]; i++) {
        const int full = blocks[i];
        if (plan_patch(s, batch, cut, 1, full, p) != FEDGE_OK || p->total > have)
            continue;
        int lo = 1, hi = s->layer[p->pF].in_h; /* the largest band that fits */
        while (lo < hi) {
            int mid = lo + (hi - lo + 1) / 2;
            if (plan_patch(s, batch, cut, mid, full, p) == FEDGE_OK && p->total <= have)
                lo = mid;
            else
                hi = mid - 1;
        }
        return plan_patch(s, batch, cut, lo, full, p);
    }
    return FEDGE_ERR_BUFFER_TOO_SMALL;
}

/* The fastest layout within have floats (SIZE_MAX: the full one); the GEMM
 * takes what is left of have, up to its full blocking's size. */
static int plan_fit(const fedge_model_spec *s, int batch, size_t have, scratch_plan *p)
{
    int ret = plan_make(s, batch, PLAN_FULL, p);
    if (ret != FEDGE_OK || p->total <= have)
        return ret;
    size_t full_gemm = p->gemm;
    for (int mode = PLAN_MIN; mode <= PLAN_LEAN; mode++) {
        if ((ret = plan_make(s, batch, mode, p)) != FEDGE_OK)
            return ret;
        if (p->total > have)
            continue;
        size_t more = have - p->total, room = full_gemm > p->gemm ? full_gemm - p->gemm : 0;
        if (more > room)
            more = room;
        p->gemm += more;
        p->xin_off += more;
        p->total += more;
        return FEDGE_OK;
    }
    return plan_patch_fit(s, batch, have, p);
}

size_t fedge_model_scratch_floats(const fedge_model_spec *spec, int batch)
{
    char text[FEDGE_MODEL_SPEC_MAX];
    scratch_plan p;
    if (spec_check(spec, text) != FEDGE_OK || plan_make(spec, batch, PLAN_FULL, &p) != FEDGE_OK)
        return 0;
    return p.total;
}

size_t fedge_model_scratch_floats_layout(const fedge_model_spec *spec, int batch,
                                         fedge_scratch_layout layout)
{
    char text[FEDGE_MODEL_SPEC_MAX];
    scratch_plan p;
    int mode = (int)layout; /* an enum may be unsigned (arm-none-eabi) */
    if (mode < PLAN_FULL || mode > PLAN_PATCH || spec_check(spec, text) != FEDGE_OK ||
        plan_make(spec, batch, mode, &p) != FEDGE_OK)
        return 0;
    return p.total;
}

size_t fedge_model_scratch_floats_min(const fedge_model_spec *spec, int batch)
{
    size_t a = fedge_model_scratch_floats_layout(spec, batch, FEDGE_SCRATCH_SMALL_GEMM);
    size_t b = fedge_model_scratch_floats_layout(spec, batch, FEDGE_SCRATCH_LEAN);
    size_t c = fedge_model_scratch_floats_layout(spec, batch, FEDGE_SCRATCH_PATCH);
    a = a < b ? a : b;
    return c > 0 && c < a ? c : a; /* 0: no conv chain into a dense layer */
}

size_t fedge_model_scratch_floats_fit(const fedge_model_spec *spec, int batch, size_t budget)
{
    char text[FEDGE_MODEL_SPEC_MAX];
    scratch_plan p;
    if (spec_check(spec, text) != FEDGE_OK || plan_fit(spec, batch, budget, &p) != FEDGE_OK)
        return 0;
    return p.total;
}

size_t fedge_model_grad_chunk_floats_patch(const fedge_model_spec *spec)
{
    char text[FEDGE_MODEL_SPEC_MAX];
    scratch_plan p;
    if (spec == NULL || spec_check(spec, text) != FEDGE_OK || plan_patch(spec, 1, -1, 1, 1, &p) != FEDGE_OK)
        return 0;
    return patch_chunk_need(spec, &p);
}

size_t fedge_model_grad_chunk_floats_fit(const fedge_model_spec *spec, int batch, size_t scratch)
{
    char text[FEDGE_MODEL_SPEC_MAX];
    scratch_plan p;
    if (spec == NULL || spec_check(spec, text) != FEDGE_OK || plan_fit(spec, batch, scratch, &p) != FEDGE_OK)
        return 0;
    return p.patch ? patch_chunk_need(spec, &p) : grad_chunk_need(spec);
}

int fedge_model_max_batch(const fedge_model_spec *spec, int batch)
{
    if (batch < 1)
        return 0;
    if (fedge_model_scratch_floats(spec, batch) > 0)
        return batch;
    int fits = 0; /* the scratch grows with the batch: bisect */
    for (int lo = 1, hi = batch - 1; lo <= hi;) {
        int mid = lo + (hi - lo) / 2;
        if (fedge_model_scratch_floats(spec, mid) > 0) {
            fits = mid;
            lo = mid + 1;
        } else {
            hi = mid - 1;
        }
    }
    return fits;
}

/* ---- layer kernels ------------------------------------------------------ */

static int check_labels(const uint8_t *y, size_t n, int n_classes)
{
    for (size_t i = 0; i < n; i++)
        if (y[i] >= n_classes)
            return FEDGE_ERR_DATA_LABEL;
    return FEDGE_OK;
}

/* Softmax of each row of z in place, stable against overflow. When y is given,
 * adds each row's cross-entropy (log-sum-exp minus the true logit, computed
 * before exponentiation so it never takes log(0)) to *loss_sum. */
static void softmax_rows(float *z, int batch, int classes, const uint8_t *y, double *loss_sum)
{
    double total = 0.0;
    for (int i = 0; i < batch; i++) {
        float *row = z + (size_t)i * classes;
        float mx = row[0];
        for (int c = 1; c < classes; c++)
            if (row[c] > mx)
                mx = row[c];
        float sum = 0.0f;
        float true_logit = y != NULL ? row[y[i]] : 0.0f;
        for (int c = 0; c < classes; c++) {
            row[c] = expf(row[c] - mx);
            sum += row[c];
        }
        if (y != NULL)
            total += (double)logf(sum) + (double)mx - (double)true_logit;
        float inv = 1.0f / sum;
        for (int c = 0; c < classes; c++)
            row[c] *= inv;
    }
    if (loss_sum != NULL)
        *loss_sum += total;
}

/* Element strides of a C x H x W activation of one layout: (b, c, h, w) is at
 * b * bs + c * cs + h * hs + w * ws. */
typedef struct {
    size_t bs, cs, hs, ws;
} strides;

static strides layout_strides(int C, int H, int W, int nhwc)
{
    strides t;
    t.bs = (size_t)C * H * W;
    t.cs = nhwc ? 1 : (size_t)H * W;
    t.hs = nhwc ? (size_t)W * C : (size_t)W;
    t.ws = nhwc ? (size_t)C : 1;
    return t;
}

/* im2col for one input channel: for each (ki, kj) a strided column of the col
 * matrix filled from a contiguous run of an input row (output columns
 * [ow0, ow1) of each row). */
static void im2col_1(const fedge_layer *l, float *in, strides t, int b, int oh0, int oh1,
                     int ow0, int ow1, int row0, float *col, int add)
{
    const int H = l->in_h, W = l->in_w, k = l->k, s = l->stride, pad = l->pad;
    const int NW = ow1 - ow0;
    const size_t K = (size_t)k * k;
    for (int oh = oh0; oh < oh1; oh++) {
        float *rows = col + (size_t)(oh - oh0) * NW * K;
        for (int ki = 0; ki < k; ki++) {
            const int ih = oh * s - pad + ki;
            float *srow = in + (size_t)b * t.bs + (size_t)(ih < row0 ? 0 : ih - row0) * t.hs;
            for (int kj = 0; kj < k; kj++) {
                float *dst = rows + (size_t)ki * k + kj;
                if (ih >= H || ih < 0) {
                    if (!add)
                        for (int ow = ow0; ow < ow1; ow++)
                            dst[(size_t)(ow - ow0) * K] = 0.0f;
                    continue;
                }
                /* ow range whose input column is inside [0, W) */
                int lo = pad - kj > 0 ? (pad - kj + s - 1) / s : 0;
                int hi = (W - 1 + pad - kj) >= 0 ? (W - 1 + pad - kj) / s + 1 : 0;
                hi = hi > ow1 ? ow1 : hi;
                lo = lo < ow0 ? ow0 : lo;
                if (lo > hi)
                    lo = hi;
                if (add) {
                    for (int ow = lo; ow < hi; ow++)
                        srow[(size_t)(ow * s + kj - pad) * t.ws] += dst[(size_t)(ow - ow0) * K];
                    continue;
                }
                for (int ow = ow0; ow < lo; ow++)
                    dst[(size_t)(ow - ow0) * K] = 0.0f;
                for (int ow = lo; ow < hi; ow++)
                    dst[(size_t)(ow - ow0) * K] = srow[(size_t)(ow * s + kj - pad) * t.ws];
                for (int ow = hi; ow < ow1; ow++)
                    dst[(size_t)(ow - ow0) * K] = 0.0f;
            }
        }
    }
}

/* Output rows [oh0, oh1), columns [ow0, ow1) of sample b:
 * col[(oh - oh0)*(ow1 - ow0) + ow - ow0][(ki*k + kj)*C + c] =
 * in(b, c, oh*s - p + ki, ow*s - p + kj), zero outside the input; in holds
 * the input from row row0 on. With add set, the transpose: in += col (col2im). */
static void im2col_px(const fedge_layer *l, float *in, int nhwc, int b, int oh0, int oh1, int ow0,
                      int ow1, int row0, float *col, int add)
{
    const int C = l->in_c, H = l->in_h, W = l->in_w, k = l->k, s = l->stride, pad = l->pad;
    const strides t = layout_strides(C, H, W, nhwc);
    const size_t K = (size_t)k * k * C, kc = (size_t)k * C;
    if (C == 1) {
        im2col_1(l, in, t, b, oh0, oh1, ow0, ow1, row0, col, add);
        return;
    }
    float *row = col;
        for (int oh = oh0; oh < oh1; oh++)
            for (int ow = ow0; ow < ow1; ow++, row += K) {
                const int iw0 = ow * s - pad;
                /* kj range whose input column is inside [0, W) */
                const int lo = iw0 < 0 ? -iw0 : 0, hi = W - iw0 < k ? W - iw0 : k;
                for (int ki = 0; ki < k; ki++) {
                    const int ih = oh * s - pad + ki;
                    float *d = row + (size_t)ki * kc;
                    if (ih < 0 || ih >= H) {
                        if (!add)
                            memset(d, 0, kc * sizeof(float));
                        continue;
                    }
                    float *src = in + (size_t)b * t.bs + (size_t)(ih - row0) * t.hs;
                    if (!add) {
                        if (lo > 0)
                            memset(d, 0, (size_t)lo * C * sizeof(float));
                        if (hi < k)
                            memset(d + (size_t)hi * C, 0, (size_t)(k - hi) * C * sizeof(float));
                    }
                    for (int kj = lo; kj < hi; kj++) {
                        float *px = src + (size_t)(iw0 + kj) * t.ws;
                        float *dc = d + (size_t)kj * C;
                        if (add) {
                            if (t.cs == 1)
                                for (int c = 0; c < C; c++)
                                    px[c] += dc[c];
                            else
                                for (int c = 0; c < C; c++)
                                    px[(size_t)c * t.cs] += dc[c];
                        } else if (t.cs == 1) {
                            memcpy(dc, px, (size_t)C * sizeof(float));
                        } else {
                            for (int c = 0; c < C; c++)
                                dc[c] = px[(size_t)c * t.cs];
                        }
                    }
                }
            }
}

/* The whole minibatch: col[(b*OH + oh)*OW + ow][...], b by b and row by row. */
static void im2col(const fedge_layer *l, float *in, int nhwc, int batch, float *col, int add)
{
    const size_t per = (size_t)l->out_h * l->out_w * l->in_c * l->k * l->k;
    for (int b = 0; b < batch; b++)
        im2col_px(l, in, nhwc, b, 0, l->out_h, 0, l->out_w, 0, col + (size_t)b * per, add);
}

/* OIHW weights [O][C][k][k] <-> HWIO [(ki*k + kj)*C + c][O] (to_hwio selects). */
/* OHWI [O][(ki*k + kj)*C + c] -> OIHW. */
static void ohwi_to_oihw(const fedge_layer *l, const float *src, float *dst)
{
    const size_t O = (size_t)l->out, C = (size_t)l->in_c, kk = (size_t)l->k * l->k;
    for (size_t o = 0; o < O; o++)
        for (size_t c = 0; c < C; c++)
            for (size_t q = 0; q < kk; q++)
                dst[(o * C + c) * kk + q] = src[(o * kk + q) * C + c];
}

static void permute_weights(const fedge_layer *l, const float *src, float *dst, int to_hwio)
{
    const size_t O = (size_t)l->out, C = (size_t)l->in_c, kk = (size_t)l->k * l->k;
    for (size_t o = 0; o < O; o++)
        for (size_t c = 0; c < C; c++)
            for (size_t q = 0; q < kk; q++) {
                size_t oihw = (o * C + c) * kk + q, hwio = (q * C + c) * O + o;
                if (to_hwio)
                    dst[hwio] = src[oihw];
                else
                    dst[oihw] = src[hwio];
            }
}

/* Offset of the window maximum (first one on ties; NaN never wins) from a channel's
 * plane start, the window at (ih0, iw0). */
static size_t pool_argmax(const float *plane, const strides *t, int k, int ih0, int iw0)
{
    size_t best = (size_t)ih0 * t->hs + (size_t)iw0 * t->ws;
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++) {
            size_t at = (size_t)(ih0 + i) * t->hs + (size_t)(iw0 + j) * t->ws;
            if (plane[at] > plane[best])
                best = at;
        }
    return best;
}

static void maxpool_forward(const fedge_layer *l, const float *in, float *out, int batch,
                            int nhwc)
{
    const int C = l->in_c, OH = l->out_h, OW = l->out_w;
    const strides ti = layout_strides(C, l->in_h, l->in_w, nhwc);
    const strides to = layout_strides(C, OH, OW, nhwc);
    if (nhwc && l->k == 2 && l->stride == 2) { /* vectorised over the channels */
        for (int b = 0; b < batch; b++)
            for (int oh = 0; oh < OH; oh++)
                for (int ow = 0; ow < OW; ow++) {
                    const float *r0 = in + b * ti.bs + (size_t)(2 * oh) * ti.hs +
                                      (size_t)(2 * ow) * ti.ws;
                    const float *r1 = r0 + ti.hs;
                    float *d = out + b * to.bs + (size_t)oh * to.hs + (size_t)ow * to.ws;
                    for (int c = 0; c < C; c++) {
                        float m = r0[c];
                        m = r0[C + c] > m ? r0[C + c] : m;
                        m = r1[c] > m ? r1[c] : m;
                        d[c] = r1[C + c] > m ? r1[C + c] : m;
                    }
                }
        return;
    }
    for (int b = 0; b < batch; b++)
        for (int c = 0; c < C; c++) {
            const float *src = in + b * ti.bs + (size_t)c * ti.cs;
            float *dst = out + b * to.bs + (size_t)c * to.cs;
            for (int oh = 0; oh < OH; oh++)
                for (int ow = 0; ow < OW; ow++)
                    dst[(size_t)oh * to.hs + (size_t)ow * to.ws] =
                        src[pool_argmax(src, &ti, l->k, oh * l->stride, ow * l->stride)];
        }
}

/* The 2x2 stride-2 pool over NHWC maps has a backward path of its own (pool_fast). */
static int pool_fast(const fedge_layer *l, int nhwc)
{
    return nhwc && l->type == FEDGE_LAYER_MAXPOOL && l->k == 2 && l->stride == 2;
}

/* A fast-path pool whose input is a ReLU's output also applies that ReLU's backward
 * (the gradient reaches only the window maximum, and only when it is > 0), so the
 * relu layer's own backward pass is skipped. */
static int pool_fuses_relu(const fedge_model_spec *s, const int *nhwc_of, int i)
{
    return i > 0 && i + 1 < s->n_layers && s->layer[i].type == FEDGE_LAYER_RELU &&
           pool_fast(&s->layer[i + 1], nhwc_of[i]);
}

/* One 2x2 window of C channels: the gradient goes to the first maximum in
 * (0,0) (0,1) (1,0) (1,1) order, as pool_argmax (NaN never wins); with relu_in
 * only when that maximum is > 0 (ReLU'). */
static void pool2_backward_px(const float *restrict a, const float *restrict e,
                              const float *restrict f, const float *restrict h,
                              const float *restrict g, float *restrict da, float *restrict de,
                              float *restrict df, float *restrict dh, int C, int relu_in)
{
    for (int c = 0; c < C; c++) {
        float ac = a[c], ec = e[c], fc = f[c], hc = h[c], gc = g[c];
        float m1 = ec > ac ? ec : ac, m2 = fc > m1 ? fc : m1, m = hc > m2 ? hc : m2;
        float gr = m > 0.0f ? gc : 0.0f;
        float v = relu_in ? gr : gc;
        float left = hc > m2 ? 0.0f : v; /* not taken by (1,1) */
        dh[c] = hc > m2 ? v : 0.0f;
        float left2 = fc > m1 ? 0.0f : left;
        df[c] = fc > m1 ? left : 0.0f;
        de[c] = ec > ac ? left2 : 0.0f;
        da[c] = ec > ac ? 0.0f : left2;
    }
}

static void maxpool_backward(const fedge_layer *l, const float *in, const float *g, float *gin,
                             int batch, int nhwc, int relu_in)
{
    const int C = l->in_c, OH = l->out_h, OW = l->out_w;
    const strides ti = layout_strides(C, l->in_h, l->in_w, nhwc);
    const strides to = layout_strides(C, OH, OW, nhwc);
    if (pool_fast(l, nhwc)) { /* each window's 4 inputs written once, vectorised over c */
        if (l->in_h % 2 || l->in_w % 2) /* the last row or column is in no window */
            memset(gin, 0, (size_t)batch * ti.bs * sizeof(float));
        for (int b = 0; b < batch; b++)
            for (int oh = 0; oh < OH; oh++)
                for (int ow = 0; ow < OW; ow++) {
                    size_t at = b * ti.bs + (size_t)(2 * oh) * ti.hs + (size_t)(2 * ow) * ti.ws;
                    const float *r0 = in + at, *r1 = r0 + ti.hs;
                    float *d0 = gin + at, *d1 = d0 + ti.hs;
                    const float *gq = g + b * to.bs + (size_t)oh * to.hs + (size_t)ow * to.ws;
                    pool2_backward_px(r0, r0 + C, r1, r1 + C, gq, d0, d0 + C, d1, d1 + C, C,
                                      relu_in);
                }
        return;
    }
    memset(gin, 0, (size_t)batch * ti.bs * sizeof(float));
    for (int b = 0; b < batch; b++)
        for (int c = 0; c < C; c++) {
            const float *src = in + b * ti.bs + (size_t)c * ti.cs;
            const float *gq = g + b * to.bs + (size_t)c * to.cs;
            float *dq = gin + b * ti.bs + (size_t)c * ti.cs;
            for (int oh = 0; oh < OH; oh++)
                for (int ow = 0; ow < OW; ow++)
                    dq[pool_argmax(src, &ti, l->k, oh * l->stride, ow * l->stride)] +=
                        gq[(size_t)oh * to.hs + (size_t)ow * to.ws];
        }
}

/* NHWC [B][HW][C] <-> NCHW [B][C][HW]. */
static void flatten_copy(const fedge_layer *l, const float *src, float *dst, int batch, int to_flat)
{
    const size_t hw = (size_t)l->in_h * l->in_w, C = (size_t)l->in_c, n = hw * C;
    for (size_t b = 0; b < (size_t)batch; b++) {
        const float *s0 = src + b * n;
        float *d0 = dst + b * n;
        for (size_t c = 0; c < C; c++)
            for (size_t i = 0; i < hw; i++) {
                if (to_flat)
                    d0[c * hw + i] = s0[i * C + c];
                else
                    d0[i * C + c] = s0[c * hw + i];
            }
    }
}

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* dst = src * mask / (1 - rate), the mask regenerated from (seed, layer, element). */
static void dropout_apply(const fedge_layer *l, int layer, uint64_t seed, const float *src,
                          float *dst, int batch, int nhwc)
{
    const uint64_t key = mix64(seed ^ mix64((uint64_t)layer + 0x9e3779b97f4a7c15ull));
    const uint32_t threshold = (uint32_t)(((uint64_t)l->rate_pct << 32) / 100);
    const float scale = 100.0f / (float)(100 - l->rate_pct);
    const size_t hw = (size_t)l->in_h * l->in_w, C = (size_t)l->in_c, B = (size_t)batch;
    /* e counts in NCHW order whatever the buffer's layout */
    const size_t cs = nhwc ? 1 : hw, ps = nhwc ? C : 1;
    for (size_t b = 0; b < B; b++)
        for (size_t c = 0; c < C; c++) {
            size_t at = b * C * hw + c * cs;
            uint64_t e = (b * C + c) * hw;
            for (size_t i = 0; i < hw; i++, at += ps) {
                uint32_t h = (uint32_t)(mix64(key + (e + i) * 0x9e3779b97f4a7c15ull) >> 32);
                dst[at] = h >= threshold ? src[at] * scale : 0.0f;
            }
        }
}

/* sums[j] = sum over the rows of m[rows x cols], row by row (vectorised across j). */
static void col_sums(const float *m, int rows, int cols, float *sums)
{
    for (int j = 0; j < cols; j++)
        sums[j] = 0.0f;
    for (int r = 0; r < rows; r++) {
        const float *row = m + (size_t)r * cols;
        for (int j = 0; j < cols; j++)
            sums[j] += row[j];
    }
}

/* out[r][j] += bias[j], then the ReLU when relu is set (the relu layer that follows a
 * conv or dense layer is applied here). */
static void add_bias_rows(float *out, const float *bias, int rows, size_t cols, int relu)
{
    for (int r = 0; r < rows; r++) {
        float *row = out + (size_t)r * cols;
        if (relu)
            for (size_t j = 0; j < cols; j++) {
                float v = row[j] + bias[j];
                row[j] = v < 0.0f ? 0.0f : v; /* NaN passes through */
            }
        else
            for (size_t j = 0; j < cols; j++)
                row[j] += bias[j];
    }
}

static int relu_follows(const fedge_model_spec *s, int i)
{
    return i + 1 < s->n_layers && s->layer[i + 1].type == FEDGE_LAYER_RELU;
}

/* ---- forward / backward -------------------------------------------------- */

typedef struct {
    const fedge_model *m;
    int batch;
    float *scratch;
    scratch_plan plan;
    int col_layer; /* the conv layer whose im2col the col buffer holds, or -1 */
    int wt_layer, wt_kind, wt_start; /* what the lean layout's wt holds (wt_view); layer -1: nothing */
    const uint8_t *xu8; /* a u8 input (x is then NULL, or xin when converted whole) */
    const float *x;     /* the model input as the layers read it (act_in) */
    float *grad;        /* the whole gradient, without a sink */
    float xscale;
    int err; /* the first GEMM error (none where the plan sized the scratch) */
} pass;

/* fedge_sgemm_wsn on the pass's GEMM scratch, whose size picks the blocking */
static void gemm_call(pass *ps, int ta, int tb, int M, int N, int K, float alpha, const float *A,
                      int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    int ret = fedge_sgemm_wsn(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
                              ps->scratch + ps->plan.gemm_off, ps->plan.gemm * sizeof(float));
    if (ret != FEDGE_OK && ps->err == FEDGE_OK)
        ps->err = ret;
}
#define GEMM(ps, ...) gemm_call(ps, __VA_ARGS__)

/* Rows [r0, r0 + rows) x columns [c0, c0 + cols) of the u8 input as floats,
 * row-major (cols apart), the same floats the shard reader gives. */
static float *xin_block(const pass *ps, int r0, int rows, size_t c0, size_t cols)
{
    const size_t dim = (size_t)ps->m->spec.input_dim;
    float *dst = ps->scratch + ps->plan.xin_off;
    for (int r = 0; r < rows; r++) {
        const uint8_t *src = ps->xu8 + (size_t)(r0 + r) * dim + c0;
        float *d = dst + (size_t)r * cols;
        for (size_t j = 0; j < cols; j++)
            d[j] = (float)src[j] * ps->xscale;
    }
    return dst;
}

/* gW[r x in] (ld in) = g[:, j0 .. j0+r)^T x, with x the u8 input in column
 * blocks: every element the same sum over the minibatch as from float rows. */
static void dense_grad_u8(pass *ps, const fedge_layer *l, const float *g, int j0, int r,
                          float *gW)
{
    const int B = ps->batch, in = l->in_c * l->in_h * l->in_w;
    int cb = (int)(ps->plan.xin / (size_t)B);
    if (cb > in)
        cb = in;
    for (int c0 = 0; c0 < in; c0 += cb) {
        int cols = in - c0 < cb ? in - c0 : cb;
        const float *xs = xin_block(ps, 0, B, (size_t)c0, (size_t)cols);
        GEMM(ps, 1, 0, r, cols, B, 1.0f, g + j0, l->out, xs, cols, 0.0f, gW + c0, in);
    }
}

static float *act_out(const pass *ps, int i)
{
    return ps->scratch + ps->plan.act_off[i];
}

static const float *act_in(const pass *ps, const float *x, int i)
{
    return i == 0 ? x : act_out(ps, i - 1);
}

static int act_in_nhwc(const pass *ps, int i)
{
    return i == 0 ? 0 : ps->plan.nhwc[i - 1];
}

/* ---- the lean layout's convolutions (PLAN_LEAN) ----------------------------- */

/* What conv l reads for output row oh of sample b: the activation, or the
 * model's u8 input converted into xin (the input rows that output row reads
 * when the input has one channel, else the whole sample). */
typedef struct {
    float *p;
    int b, row0;
} conv_in;

static conv_in conv_input(pass *ps, const fedge_layer *l, const float *in, int b, int oh)
{
    conv_in r = {(float *)in, b, 0};
    if (in != NULL)
        return r;
    r.b = 0;
    if (l->in_c == 1) {
        int lo = oh * l->stride - l->pad, hi = lo + l->k;
        lo = lo < 0 ? 0 : lo;
        hi = hi > l->in_h ? l->in_h : hi;
        r.row0 = lo;
        r.p = xin_block(ps, b, 1, (size_t)lo * l->in_w, (size_t)(hi > lo ? hi - lo : 0) * l->in_w);
        return r;
    }
    r.p = xin_block(ps, b, 1, 0, (size_t)ps->m->spec.input_dim);
    return r;
}

/* Conv layer li's HWIO weights [K][O] in the plan's wt, whole (both kinds
 * then view it) or a block: kind 0 the output channels [start, start + n)
 * (K x n), kind 1 the im2col columns [start, start + n) (n x O). *ld: the
 * block's row stride. Permuted again only when wt holds something else. */
static const float *wt_view(pass *ps, int li, int kind, int start, int n, int *ld)
{
    const fedge_layer *l = &ps->m->spec.layer[li];
    const int O = l->out, C = l->in_c, kk = l->k * l->k, K = C * kk;
    const float *w = ps->m->params + l->w_off;
    float *wt = ps->scratch + ps->plan.wt_off;
    if (ps->plan.ob[li] == O && ps->plan.kb[li] == K) {
        if (ps->wt_layer != li || ps->wt_kind != 2) {
            permute_weights(l, w, wt, 1);
            ps->wt_layer = li;
            ps->wt_kind = 2;
        }
        *ld = O;
        return kind == 0 ? wt + start : wt + (size_t)start * O;
    }
    if (ps->wt_layer != li || ps->wt_kind != kind || ps->wt_start != start) {
        if (kind == 0)
            for (int o = start; o < start + n; o++)
                for (int c = 0; c < C; c++)
                    for (int q = 0; q < kk; q++)
                        wt[(size_t)(q * C + c) * n + (o - start)] = w[((size_t)o * C + c) * kk + q];
        else
            for (int r = start; r < start + n; r++)
                for (int o = 0; o < O; o++)
                    wt[(size_t)(r - start) * O + o] = w[((size_t)o * C + r % C) * kk + r / C];
        ps->wt_layer = li;
        ps->wt_kind = kind;
        ps->wt_start = start;
    }
    *ld = kind == 0 ? n : O;
    return wt;
}

/* Output channels [o0, o0 + on), columns [ow0, ow1) of rows [oh0, oh0 +
 * nrows) of conv li for sample b into dst (NHWC rows of ow1 - ow0 pixels of
 * all O channels), the plan's pb output pixels of im2col at a time and the
 * weights in its blocks (o0 starts one). Each element is the whole product's
 * sum: the GEMM's rows and columns are independent. */
static void conv_rows(pass *ps, int li, const float *in, int nhwc, int b, int oh0, int nrows,
                      int ow0, int ow1, int relu, int o0, int on, float *dst)
{
    const fedge_layer *l = &ps->m->spec.layer[li];
    const int K = l->in_c * l->k * l->k, O = l->out, NW = ow1 - ow0, ob = ps->plan.ob[li];
    const int pb = ps->plan.pb[li];
    const float *bias = ps->m->params + l->b_off;
    float *col = ps->scratch + ps->plan.col_off;
    for (int r = 0; r < nrows; r++) {
        float *d = dst + (size_t)r * NW * O;
        conv_in src = conv_input(ps, l, in, b, oh0 + r);
        for (int c0 = o0; c0 < o0 + on; c0 += ob) {
            int n = o0 + on - c0 < ob ? o0 + on - c0 : ob, ld;
            for (int w0 = ow0; w0 < ow1; w0 += pb) {
                int np = ow1 - w0 < pb ? ow1 - w0 : pb;
                if (pb < NW || c0 == o0) /* else the pixels' im2col is still in col */
                    im2col_px(l, src.p, nhwc, src.b, oh0 + r, oh0 + r + 1, w0, w0 + np, src.row0,
                              col, 0);
                const float *wt = wt_view(ps, li, 0, c0, n, &ld);
                GEMM(ps, 0, 0, np, n, K, 1.0f, col, K, wt, ld, 0.0f, d + (size_t)(w0 - ow0) * O + c0,
                     O);
            }
        }
        if (on == O) {
            add_bias_rows(d, bias, NW, (size_t)O, relu);
            continue;
        }
        for (int p = 0; p < NW; p++) /* add_bias_rows on the block */
            for (int j = o0; j < o0 + on; j++) {
                float v = d[(size_t)p * O + j] + bias[j];
                d[(size_t)p * O + j] = relu && v < 0.0f ? 0.0f : v;
            }
    }
}

/* The 2x2 stride-2 pool pl of a tile of two conv rows (ct, NHWC, 2 x npc
 * pixels a row) into pooled columns [pc0, pc0 + npc) of row pr of sample b
 * of out (NCHW when nchw, else NHWC); maxpool_forward's fast path. */
static void pool_rows(const fedge_layer *pl, const float *ct, int pc0, int npc, float *out,
                      int nchw, int b, int pr)
{
    const int C = pl->in_c, OW = pl->out_w, TW = 2 * npc;
    const size_t plane = (size_t)pl->out_h * OW, bs = plane * C;
    for (int t = 0; t < npc; t++) {
        const int ow = pc0 + t;
        const float *r0 = ct + (size_t)(2 * t) * C, *r1 = r0 + (size_t)TW * C;
        for (int c = 0; c < C; c++) {
            float m = r0[c];
            m = r0[C + c] > m ? r0[C + c] : m;
            m = r1[c] > m ? r1[c] : m;
            m = r1[C + c] > m ? r1[C + c] : m;
            out[(size_t)b * bs + (nchw ? (size_t)c * plane + (size_t)pr * OW + ow
                                       : ((size_t)pr * OW + ow) * C + c)] = m;
        }
    }
}

/* Row pr of sample b of the pool pl's gradient g (NCHW: in plane 0). */
static float *pool_grow(const fedge_layer *pl, float *g, int nchw, int b, int pr)
{
    const size_t plane = (size_t)pl->out_h * pl->out_w;
    return g + (size_t)b * plane * pl->in_c + (size_t)pr * pl->out_w * (nchw ? 1 : (size_t)pl->in_c);
}

/* 2-bit window positions (0..3: (0,0) (0,1) (1,0) (1,1)), four a byte. */
static void mask_set(uint8_t *mk, size_t e, int pos)
{
    mk[e >> 2] = (uint8_t)((mk[e >> 2] & ~(3u << (2 * (e & 3)))) | (unsigned)pos << (2 * (e & 3)));
}

static int mask_get(const uint8_t *mk, size_t e)
{
    return mk[e >> 2] >> (2 * (e & 3)) & 3;
}

/* pool2_backward_px (ReLU' included) over channels [c0, c1) of a tile of
 * two conv rows in ct (pool_rows'), in place: ct becomes the conv output's
 * gradient; grow is the pool's gradient row (NHWC: OW x C; NCHW: its row of
 * plane 0, the planes out_h x out_w apart).
 * Each window's gradient (ReLU' applied) goes back into grow and the
 * position that takes it into mk (element me + ow * C + c), so the tile's
 * gradient can be formed again without the conv (dz_row). */
static void pool_rows_backward(const fedge_layer *pl, float *ct, int pc0, int npc, float *grow,
                               int nchw, uint8_t *mk, size_t me, int c0, int c1)
{
    const int C = pl->in_c, TW = 2 * npc;
    const size_t cs = nchw ? (size_t)pl->out_h * pl->out_w : 1; /* grow's channel stride */
    for (int t = 0; t < npc; t++) {
        const int ow = pc0 + t;
        float *a = ct + (size_t)(2 * t) * C, *e = a + C, *f = a + (size_t)TW * C, *h = f + C;
        float *gq = grow + (size_t)ow * (nchw ? 1 : (size_t)C);
        for (int c = c0; c < c1; c++) {
            float ac = a[c], ec = e[c], fc = f[c], hc = h[c], gc = gq[(size_t)c * cs];
            float m1 = ec > ac ? ec : ac, m2 = fc > m1 ? fc : m1, m = hc > m2 ? hc : m2;
            float v = m > 0.0f ? gc : 0.0f;
            float left = hc > m2 ? 0.0f : v;
            h[c] = hc > m2 ? v : 0.0f;
            float left2 = fc > m1 ? 0.0f : left;
            f[c] = fc > m1 ? left : 0.0f;
            e[c] = ec > ac ? left2 : 0.0f;
            a[c] = ec > ac ? 0.0f : left2;
            gq[(size_t)c * cs] = v;
            mask_set(mk, me + (size_t)ow * C + (size_t)c,
                     hc > m2 ? 3 : fc > m1 ? 2 : ec > ac ? 1 : 0);
        }
    }
}

/* Row r (0 or 1) of the tile's gradient pool_rows_backward formed, channels
 * [c0, c1), into ct (2 npc pixels), from grow and mk as it left them. */
static void dz_row(const fedge_layer *pl, float *ct, int pc0, int npc, int r, const float *grow,
                   int nchw, const uint8_t *mk, size_t me, int c0, int c1)
{
    const int C = pl->in_c;
    const size_t plane = (size_t)pl->out_h * pl->out_w;
    for (int t = 0; t < npc; t++) {
        const int ow = pc0 + t;
        float *a = ct + (size_t)(2 * t) * C, *e = a + C;
        for (int c = c0; c < c1; c++) {
            int pos = mask_get(mk, me + (size_t)ow * C + (size_t)c);
            float v = nchw ? grow[(size_t)c * plane + ow] : grow[(size_t)ow * C + c];
            a[c] = pos == 2 * r ? v : 0.0f;
            e[c] = pos == 2 * r + 1 ? v : 0.0f;
        }
    }
}

/* A conv's weight gradient gw[o][q] (OHWI) = sum over the pixels p of
 * g[p][o] * col[p][q], fed a few pixels at a time, summed as the portable
 * GEMM sums it: in slices of fedge_gemm_k_slice(pixels), each from zero and
 * one pixel at a time, then added to gw (so the same bits; blas.h). */
typedef struct {
    float *acc, *gw; /* acc OHWI; gw OIHW */
    int O, K, C, gs; /* C: input channels; gs: the stride of g's pixels */
    size_t slice, done, total;
} wgrad;

static void wgrad_init(wgrad *w, float *acc, float *gw, int O, int K, int C, int gs, size_t total)
{
    w->acc = acc;
    w->gw = gw;
    w->O = O;
    w->C = C;
    w->gs = gs;
    w->K = K;
    w->slice = (size_t)fedge_gemm_k_slice(total > INT_MAX ? INT_MAX : (int)total);
    w->done = 0;
    w->total = total;
    memset(gw, 0, (size_t)O * K * sizeof(float));
}

static void wgrad_rows(wgrad *w, const float *g, const float *col, int px)
{
    const int O = w->O, K = w->K;
    const size_t n = (size_t)O * K;
    for (int p = 0; p < px; p++, g += w->gs, col += K) {
        if (w->done % w->slice == 0)
            memset(w->acc, 0, n * sizeof(float));
        for (int o = 0; o < O; o++) {
            const float go = g[o];
            float *restrict a = w->acc + (size_t)o * K;
            for (int q = 0; q < K; q++)
                a[q] += go * col[q];
        }
        if (++w->done % w->slice == 0 || w->done == w->total)
            for (size_t i = 0; i < n; i++)
                w->gw[i / K * K + i % K % w->C * (K / w->C) + i % K / w->C] += w->acc[i];
    }
}

/* Fused conv i's output gradient over a tile: columns [2 pc0, 2 (pc0 + npc))
 * of rows oh, oh + 1 of sample b, channels [o0, o0 + n), recomputed into ct
 * and formed in place from grow, its pool's gradient row, the window
 * positions into mk from element me (pool_rows_backward). */
static float *fused_tile(pass *ps, int i, const float *in, int in_nhwc, int b, int oh, int pc0,
                         int npc, float *grow, int g_nchw, uint8_t *mk, size_t me, int o0, int n)
{
    const fedge_model_spec *s = &ps->m->spec;
    float *ct = ps->scratch + ps->plan.ct_off;
    conv_rows(ps, i, in, in_nhwc, b, oh, 2, 2 * pc0, 2 * (pc0 + npc), 1, o0, n, ct);
    pool_rows_backward(&s->layer[i + 2], ct, pc0, npc, grow, g_nchw, mk, me, o0, o0 + n);
    return ct;
}

/* The window positions of fused conv i: the whole map's (element
 * ((b * pooled rows + pr) * pooled columns) * C), or a streamed conv's one
 * pooled row's (element 0). */
static uint8_t *fused_mask(const pass *ps, int i, int b, int pr, size_t *me)
{
    const fedge_layer *pl = &ps->m->spec.layer[i + 2];
    if (ps->plan.mkrow[i]) {
        *me = 0;
        return (uint8_t *)(ps->scratch + ps->plan.mkrow_off);
    }
    *me = ((size_t)b * pl->out_h + (size_t)pr) * pl->out_w * pl->in_c;
    return (uint8_t *)(ps->scratch + ps->plan.mk_off);
}

/* Where conv i's bias sums wait while its weight blocks (ob channels)
 * go out through chunk: the slice's tail when both fit a slice. */
static float *bias_sums(const pass *ps, int i, float *chunk)
{
    const fedge_layer *l = &ps->m->spec.layer[i];
    size_t O = (size_t)l->out, w = (size_t)ps->plan.ob[i] * l->in_c * l->k * l->k;
    return w + O <= ps->plan.cb ? chunk + ps->plan.cb - O : ps->scratch + ps->plan.gb_off;
}

/* The weight-gradient sums of output pixels [w_lo, w_hi) of row oh of
 * sample b of conv i (channels [o0, o0 + n), into w and gb), dr their output
 * gradient (NHWC, all channels), in pixel order. */
static void wgrad_px(pass *ps, int i, const float *in, int in_nhwc, const float *dr, int b,
                     int oh, int w_lo, int w_hi, int o0, int n, wgrad *w, float *gb)
{
    const fedge_layer *l = &ps->m->spec.layer[i];
    const int O = l->out, pb = ps->plan.pb[i];
    float *col = ps->scratch + ps->plan.col_off;
    for (int p = 0; p < w_hi - w_lo; p++) /* col_sums' order: pixel by pixel */
        for (int j = o0; j < o0 + n; j++)
            gb[j] += dr[(size_t)p * O + j];
    conv_in src = conv_input(ps, l, in, b, oh);
    for (int w0 = w_lo; w0 < w_hi; w0 += pb) {
        const int np = w_hi - w0 < pb ? w_hi - w0 : pb;
        im2col_px(l, src.p, in_nhwc, src.b, oh, oh + 1, w0, w0 + np, src.row0, col, 0);
        wgrad_rows(w, dr + (size_t)(w0 - w_lo) * O + o0, col, np);
    }
}

/* The weight-gradient sums of output rows [oh, oh + step) of sample b of
 * conv i (channels [o0, o0 + n), into w and gb): g is its output's gradient
 * (NHWC), or, fused, grow its pool's gradient row, the output gradient then
 * formed a tile at a time from the window positions (fresh: the conv
 * recomputed for the first row), each row in turn (pixels in row order). */
static void lean_wgrad_rows(pass *ps, int i, const float *in, int in_nhwc, const float *g,
                            float *grow, int g_nchw, int b, int oh, int o0, int n, int fresh,
                            wgrad *w, float *gb)
{
    const fedge_layer *l = &ps->m->spec.layer[i];
    const int O = l->out, OW = l->out_w;
    if (!ps->plan.fused[i]) {
        wgrad_px(ps, i, in, in_nhwc, g + ((size_t)b * l->out_h + oh) * OW * O, b, oh, 0, OW, o0, n,
                 w, gb);
        return;
    }
    const int tp = ps->plan.tp[i], POW = OW / 2;
    size_t me;
    uint8_t *mk = fused_mask(ps, i, b, oh / 2, &me);
    float *ct = ps->scratch + ps->plan.ct_off;
    for (int r = 0; r < 2; r++)
        for (int pc0 = 0; pc0 < POW; pc0 += tp) {
            const int npc = POW - pc0 < tp ? POW - pc0 : tp;
            if (fresh && r == 0)
                fused_tile(ps, i, in, in_nhwc, b, oh, pc0, npc, grow, g_nchw, mk, me, o0, n);
            else
                dz_row(&ps->m->spec.layer[i + 2], ct, pc0, npc, r, grow, g_nchw, mk, me, o0,
                       o0 + n);
            wgrad_px(ps, i, in, in_nhwc, ct, b, oh + r, 2 * pc0, 2 * (pc0 + npc), o0, n, w, gb);
        }
}

/* col2im of output pixels [w_lo, w_hi) of row oh of conv i, dr their output
 * gradient (all channels): gin (sample b, from input row row0 on) +=
 * dr x W^T, the weights in the plan's column blocks. */
static void gin_px(pass *ps, int i, const float *dr, int oh, int w_lo, int w_hi, float *gin,
                   int nhwc, int b, int row0)
{
    const fedge_layer *l = &ps->m->spec.layer[i];
    const int K = l->in_c * l->k * l->k, O = l->out, pb = ps->plan.pb[i], kb = ps->plan.kb[i];
    float *col = ps->scratch + ps->plan.col_off;
    for (int w0 = w_lo; w0 < w_hi; w0 += pb) {
        const int np = w_hi - w0 < pb ? w_hi - w0 : pb;
        for (int q0 = 0; q0 < K; q0 += kb) {
            int n = K - q0 < kb ? K - q0 : kb, ld;
            const float *wt = wt_view(ps, i, 1, q0, n, &ld);
            GEMM(ps, 0, 1, np, n, O, 1.0f, dr + (size_t)(w0 - w_lo) * O, O, wt, ld, 0.0f,
                 col + q0, K);
        }
        im2col_px(l, gin, nhwc, b, oh, oh + 1, w0, w0 + np, row0, col, 1);
    }
}

/* Backward of conv layer i in the lean layout: g is its output's gradient
 * (NHWC), or, fused, its pool's (NCHW when g_nchw), the conv output then
 * recomputed a tile (two rows, plan.tp pooled columns) at a time, once, its
 * gradient formed in place and each window's gradient and position kept
 * (in g and the plan's mask) for the rest. First the input gradient into gin
 * (when wanted), with every weight as it was; then the weight gradient, the
 * plan's ob output channels at a time, into lw (OIHW) or, with a sink, into
 * chunk and handed over (the step may then change them: later blocks read
 * only their own weights), and the bias gradient into gb or, with a sink,
 * handed over last. Output pixels go in row order throughout, so every sum
 * has the whole product's terms in its order.
 * Streamed (plan.stream): the input gradient is the pool output's of the
 * fused first conv j below, which learns in one weight block: gin is then a
 * ring of ring_rows input rows, and each input row, once complete, goes
 * straight into j's weight-gradient sums (j's rows in the order j's own
 * backward takes them); j's gradient is handed over when the ring is done,
 * before i's. */
static int lean_conv_backward(pass *ps, int i, const float *in, int in_nhwc, float *g,
                              int g_nchw, float *gin, float *lw, float *gb, float *chunk,
                              fedge_grad_sink sink, void *sink_arg)
{
    int ret = FEDGE_OK;
    const fedge_model_spec *s = &ps->m->spec;
    const fedge_layer *l = &s->layer[i];
    const int fused = ps->plan.fused[i], step = fused ? 2 : 1;
    const int B = ps->batch, K = l->in_c * l->k * l->k, O = l->out, OH = l->out_h, OW = l->out_w;
    const int ob = ps->plan.ob[i], tp = ps->plan.tp[i], POW = OW / 2;
    const int sj = gin ? ps->plan.stream[i] - 1 : -1;
    float *ct = ps->scratch + ps->plan.ct_off;
    if (gin) {
        const fedge_layer *lj = sj >= 0 ? &s->layer[sj] : l;
        const int Kj = lj->in_c * lj->k * lj->k, Oj = lj->out;
        const float *inj = sj >= 0 ? act_in(ps, ps->x, sj) : NULL;
        const int inj_nhwc = sj >= 0 ? act_in_nhwc(ps, sj) : 0;
        const size_t rowf = (size_t)l->in_w * l->in_c, R = ring_rows(l);
        float *lwj = NULL, *gbj = NULL;
        wgrad wj;
        if (sj >= 0) {
            lwj = sink ? chunk : ps->grad + lj->w_off;
            gbj = sink ? bias_sums(ps, sj, chunk) : ps->grad + lj->b_off;
            for (int j = 0; j < Oj; j++)
                gbj[j] = 0.0f;
            wgrad_init(&wj, ps->scratch + ps->plan.acc_off, lwj, Oj, Kj, lj->in_c, Oj,
                       (size_t)B * lj->out_h * lj->out_w);
        } else {
            memset(gin, 0, (size_t)B * l->in_c * l->in_h * l->in_w * sizeof(float));
        }
        for (int b = 0; b < B; b++) {
            int done = 0; /* streamed: input rows before it are complete and gone */
            int gs = b;   /* the sample gin holds it at */
            if (sj >= 0) {
                memset(gin, 0, R * rowf * sizeof(float));
                gs = 0;
            }
            for (int oh = 0; oh < OH; oh += step)
                for (int r = 0; r < step; r++) {
                    const int row = oh + r;
                    if (!fused) {
                        gin_px(ps, i, g + ((size_t)b * OH + row) * OW * O, row, 0, OW, gin, in_nhwc,
                               gs, done);
                    } else {
                        float *grow = pool_grow(&s->layer[i + 2], g, g_nchw, b, oh / 2);
                        size_t me;
                        uint8_t *mk = fused_mask(ps, i, b, oh / 2, &me);
                        for (int pc0 = 0; pc0 < POW; pc0 += tp) {
                            const int npc = POW - pc0 < tp ? POW - pc0 : tp;
                            if (r == 0)
                                fused_tile(ps, i, in, in_nhwc, b, oh, pc0, npc, grow, g_nchw, mk,
                                           me, 0, O);
                            else
                                dz_row(&s->layer[i + 2], ct, pc0, npc, 1, grow, g_nchw, mk, me, 0,
                                       O);
                            gin_px(ps, i, ct, row, 2 * pc0, 2 * (pc0 + npc), gin, in_nhwc, gs,
                                   done);
                        }
                    }
                    if (sj < 0)
                        continue;
                    int lim = row + 1 < OH ? (row + 1) * l->stride - l->pad : l->in_h;
                    lim = lim < l->in_h ? lim : l->in_h;
                    for (; done < lim; done++) { /* the ring's first row is complete */
                        lean_wgrad_rows(ps, sj, inj, inj_nhwc, NULL, gin, 0, b, 2 * done, 0, Oj,
                                        1, &wj, gbj);
                        memmove(gin, gin + rowf, (R - 1) * rowf * sizeof(float));
                        memset(gin + (R - 1) * rowf, 0, rowf * sizeof(float));
                    }
                }
        }
        if (sj >= 0 && sink) {
            ps->wt_layer = -1;
            CHK(sink(sink_arg, lj->w_off, chunk, (size_t)Oj * Kj));
            memmove(chunk, gbj, (size_t)Oj * sizeof(float));
            CHK(sink(sink_arg, lj->b_off, chunk, (size_t)Oj));
        }
    } else if (fused && ps->plan.mkrow[i] == 0) { /* the window positions, for the blocks */
        for (int b = 0; b < B; b++)
            for (int oh = 0; oh < OH; oh += 2) {
                size_t me;
                uint8_t *mk = fused_mask(ps, i, b, oh / 2, &me);
                for (int pc0 = 0; pc0 < POW; pc0 += tp)
                    fused_tile(ps, i, in, in_nhwc, b, oh, pc0, POW - pc0 < tp ? POW - pc0 : tp,
                               pool_grow(&s->layer[i + 2], g, g_nchw, b, oh / 2), g_nchw, mk, me,
                               0, O);
            }
    }
    if (sink) {
        lw = chunk;
        gb = bias_sums(ps, i, chunk);
    }
    for (int j = 0; j < O; j++)
        gb[j] = 0.0f;
    for (int o0 = 0; o0 < O; o0 += ob) {
        const int n = O - o0 < ob ? O - o0 : ob;
        float *dst = sink ? chunk : lw + (size_t)o0 * K;
        wgrad w;
        wgrad_init(&w, ps->scratch + ps->plan.acc_off, dst, n, K, l->in_c, O, (size_t)B * OH * OW);
        for (int b = 0; b < B; b++)
            for (int oh = 0; oh < OH; oh += step)
                lean_wgrad_rows(ps, i, in, in_nhwc, g,
                                fused ? pool_grow(&s->layer[i + 2], g, g_nchw, b, oh / 2) : NULL,
                                g_nchw, b, oh, o0, n, ps->plan.mkrow[i], &w, gb);
        if (sink) {
            ps->wt_layer = -1;
            CHK(sink(sink_arg, l->w_off + (size_t)o0 * K, chunk, (size_t)n * K));
        }
    }
    if (sink) {
        memmove(chunk, gb, (size_t)O * sizeof(float));
        ps->wt_layer = -1;
        CHK(sink(sink_arg, l->b_off, chunk, (size_t)O));
    }
cleanup:
    return ret;
}

/* Runs every layer and the softmax; returns the probabilities (inside scratch).
 * train: dropout active with dropout_seed, else dropout is the identity. */
/* ---- the patch layout's passes (PLAN_PATCH) ------------------------------- */

/* Rows of one map in a band buffer or gradient window: [B][C][rows][W], row
 * r at r - base. */
typedef struct {
    float *p;
    int C, rows, W, base;
} band_t;

static float *band_row(const band_t *m, int b, int c, int r)
{
    return m->p + (((size_t)b * m->C + (size_t)c) * (size_t)m->rows + (size_t)(r - m->base)) *
                      (size_t)m->W;
}

/* Map j's band buffer (-1: the input), its first row r0. */
static band_t patch_fmap(const pass *ps, int j, int r0)
{
    const fedge_model_spec *s = &ps->m->spec;
    const scratch_plan *p = &ps->plan;
    int o = p->pfown[j + 1];
    band_t m = {ps->scratch + p->pf_off[o], j < 0 ? s->in_c : s->layer[j].out_c, p->pfrows[o],
                j < 0 ? s->in_w : s->layer[j].out_w, p->pfwhole[o] ? 0 : r0};
    return m;
}

/* Map j's gradient window, its first row r0 (the first not yet complete). */
static band_t patch_wmap(const pass *ps, int j, int r0)
{
    const fedge_model_spec *s = &ps->m->spec;
    const scratch_plan *p = &ps->plan;
    int o = p->pwown[j];
    band_t m = {ps->scratch + p->pw_off[o], s->layer[j].out_c, p->pwrows[o], s->layer[j].out_w,
                p->pwwhole[o] ? 0 : r0};
    return m;
}

/* The output columns [*w0, *w1) whose input column w * s - pad + kj is in [0, IW). */
static void col_span(int s, int pad, int kj, int IW, int OW, int *w0, int *w1)
{
    int lo = pad - kj, hi = IW - 1 + pad - kj;
    int a = lo <= 0 ? 0 : (lo + s - 1) / s, b = hi < 0 ? 0 : hi / s + 1;
    *w0 = a;
    *w1 = b < OW ? b : OW;
    if (*w1 < *w0)
        *w1 = *w0;
}

/* Output row oh of conv l, sample b, channel o, into dst (out_w floats). */
static void pconv_row(const fedge_layer *l, const float *wts, const float *bias, const band_t *in,
                      int b, int o, int oh, float *dst, int relu)
{
    const int C = l->in_c, k = l->k, s = l->stride, pad = l->pad, OW = l->out_w;
    for (int w = 0; w < OW; w++)
        dst[w] = 0.0f;
    for (int c = 0; c < C; c++)
        for (int ki = 0; ki < k; ki++) {
            int ih = oh * s - pad + ki;
            if (ih < 0 || ih >= l->in_h)
                continue;
            const float *src = band_row(in, b, c, ih);
            const float *wr = wts + (((size_t)o * C + (size_t)c) * k + (size_t)ki) * k;
            for (int kj = 0; kj < k; kj++) {
                int w0, w1;
                col_span(s, pad, kj, l->in_w, OW, &w0, &w1);
                const float wv = wr[kj], *sp = src - pad + kj;
                if (s == 1)
                    for (int w = w0; w < w1; w++)
                        dst[w] += wv * sp[w];
                else
                    for (int w = w0; w < w1; w++)
                        dst[w] += wv * sp[w * s];
            }
        }
    for (int w = 0; w < OW; w++) {
        float v = dst[w] + bias[o];
        dst[w] = relu && v < 0.0f ? 0.0f : v; /* NaN passes through */
    }
}

static void pconv_fwd(const fedge_layer *l, const float *wts, const float *bias, const band_t *in,
                      const band_t *out, int B, rows_t r, int c0, int c1, int relu)
{
    for (int b = 0; b < B; b++)
        for (int o = c0; o < c1; o++)
            for (int oh = r.lo; oh < r.hi; oh++)
                pconv_row(l, wts, bias, in, b, o, oh, band_row(out, b, o, oh), relu);
}

/* Output rows r, channels [c0, c1): dw[(o - c0) x K] and db[o] add their
 * sums (when given), gin their input gradient (when given). */
static void pconv_bwd(const fedge_layer *l, const float *wts, const band_t *in, const band_t *gout,
                      const band_t *gin, int B, rows_t r, int c0, int c1, float *dw, float *db)
{
    const int C = l->in_c, k = l->k, s = l->stride, pad = l->pad, OW = l->out_w;
    for (int b = 0; b < B; b++)
        for (int o = c0; o < c1; o++)
            for (int oh = r.lo; oh < r.hi; oh++) {
                const float *g = band_row(gout, b, o, oh);
                if (db) {
                    float sum = 0.0f;
                    for (int w = 0; w < OW; w++)
                        sum += g[w];
                    db[o] += sum;
                }
                for (int c = 0; c < C; c++)
                    for (int ki = 0; ki < k; ki++) {
                        int ih = oh * s - pad + ki;
                        if (ih < 0 || ih >= l->in_h)
                            continue;
                        const float *src = dw ? band_row(in, b, c, ih) - pad : NULL;
                        float *gi = gin ? band_row(gin, b, c, ih) - pad : NULL;
                        size_t wi = (((size_t)o * C + (size_t)c) * k + (size_t)ki) * k;
                        for (int kj = 0; kj < k; kj++) {
                            int w0, w1;
                            col_span(s, pad, kj, l->in_w, OW, &w0, &w1);
                            if (dw) {
                                float acc = 0.0f;
                                for (int w = w0; w < w1; w++)
                                    acc += g[w] * src[w * s + kj];
                                dw[wi - (size_t)c0 * C * k * k + (size_t)kj] += acc;
                            }
                            if (gi) {
                                const float wv = wts[wi + (size_t)kj];
                                for (int w = w0; w < w1; w++)
                                    gi[w * s + kj] += wv * g[w];
                            }
                        }
                    }
            }
}

/* The window's first maximum (row-major; NaN never wins), as pool_argmax. */
static void ppool_argmax(const fedge_layer *l, const band_t *in, int b, int c, int oh, int ow,
                         int *bi, int *bj)
{
    const int ih0 = oh * l->stride, iw0 = ow * l->stride;
    float best = band_row(in, b, c, ih0)[iw0];
    *bi = 0;
    *bj = 0;
    for (int i = 0; i < l->k; i++) {
        const float *row = band_row(in, b, c, ih0 + i) + iw0;
        for (int j = 0; j < l->k; j++)
            if (row[j] > best) {
                best = row[j];
                *bi = i;
                *bj = j;
            }
    }
}

static void ppool_fwd(const fedge_layer *l, const band_t *in, const band_t *out, int B, rows_t r,
                      int c0, int c1)
{
    for (int b = 0; b < B; b++)
        for (int c = c0; c < c1; c++)
            for (int oh = r.lo; oh < r.hi; oh++) {
                float *dst = band_row(out, b, c, oh);
                for (int ow = 0; ow < l->out_w; ow++) {
                    int bi, bj;
                    ppool_argmax(l, in, b, c, oh, ow, &bi, &bj);
                    dst[ow] = band_row(in, b, c, oh * l->stride + bi)[ow * l->stride + bj];
                }
            }
}

static void ppool_bwd(const fedge_layer *l, const band_t *in, const band_t *gout, const band_t *gin,
                      int B, rows_t r, int c0, int c1)
{
    for (int b = 0; b < B; b++)
        for (int c = c0; c < c1; c++)
            for (int oh = r.lo; oh < r.hi; oh++) {
                const float *g = band_row(gout, b, c, oh);
                for (int ow = 0; ow < l->out_w; ow++) {
                    int bi, bj;
                    ppool_argmax(l, in, b, c, oh, ow, &bi, &bj);
                    band_row(gin, b, c, oh * l->stride + bi)[ow * l->stride + bj] += g[ow];
                }
            }
}

/* Conv l inside pool q, pooled rows r, channels [c0, c1): forward into out;
 * backward (gout given) each window's gradient, ReLU' at its maximum, into
 * the conv's weight sums dw[(o - c0) x K], bias sums db[o] and input
 * gradient gin (each when given). The window's conv rows of one channel
 * are computed into rowbuf (q->k x l->out_w floats). */
static void pfused(const fedge_layer *l, const fedge_layer *q, const float *wts,
                   const float *bias, const band_t *in, const band_t *out, const band_t *gout,
                   const band_t *gin, int B, rows_t r, int c0, int c1, int relu, float *dw,
                   float *db, float *rowbuf)
{
    const int C = l->in_c, k = l->k, OW = l->out_w;
    for (int b = 0; b < B; b++)
        for (int o = c0; o < c1; o++)
            for (int oh = r.lo; oh < r.hi; oh++) {
                for (int i = 0; i < q->k; i++)
                    pconv_row(l, wts, bias, in, b, o, oh * q->stride + i, rowbuf + (size_t)i * OW,
                              relu);
                for (int ow = 0; ow < q->out_w; ow++) {
                    const float *w0 = rowbuf + (size_t)ow * q->stride;
                    float v = w0[0];
                    int bi = 0, bj = 0;
                    for (int i = 0; i < q->k; i++) /* the first maximum; NaN never wins */
                        for (int j = 0; j < q->k; j++)
                            if (w0[(size_t)i * OW + (size_t)j] > v) {
                                v = w0[(size_t)i * OW + (size_t)j];
                                bi = i;
                                bj = j;
                            }
                    if (!gout) {
                        band_row(out, b, o, oh)[ow] = v;
                        continue;
                    }
                    const float g = band_row(gout, b, o, oh)[ow];
                    if (relu && !(v > 0.0f))
                        continue;
                    const int ch = oh * q->stride + bi, cw = ow * q->stride + bj;
                    if (db)
                        db[o] += g;
                    for (int c = 0; c < C; c++)
                        for (int ki = 0; ki < k; ki++) {
                            int ih = ch * l->stride - l->pad + ki;
                            if (ih < 0 || ih >= l->in_h)
                                continue;
                            const float *src = band_row(in, b, c, ih);
                            const size_t wi = (((size_t)o * C + (size_t)c) * k + (size_t)ki) * k;
                            float *d = dw ? dw + wi - (size_t)c0 * C * k * k : NULL;
                            float *gr = gin ? band_row(gin, b, c, ih) : NULL;
                            for (int kj = 0; kj < k; kj++) {
                                int iw = cw * l->stride - l->pad + kj;
                                if (iw < 0 || iw >= l->in_w)
                                    continue;
                                if (d)
                                    d[kj] += g * src[iw];
                                if (gr)
                                    gr[iw] += wts[wi + (size_t)kj] * g;
                            }
                        }
                }
            }
}

/* dst = src * mask / (1 - rate) over rows r, channels [c0, c1): the mask of
 * dropout_apply (element e counted in NCHW order over the whole map). */
static void pdrop(const fedge_layer *l, int layer, uint64_t seed, const band_t *src,
                  const band_t *dst, int B, rows_t r, int c0, int c1)
{
    const uint64_t key = mix64(seed ^ mix64((uint64_t)layer + 0x9e3779b97f4a7c15ull));
    const uint32_t threshold = (uint32_t)(((uint64_t)l->rate_pct << 32) / 100);
    const float scale = 100.0f / (float)(100 - l->rate_pct);
    const size_t C = (size_t)l->in_c, H = (size_t)l->in_h, W = (size_t)l->in_w;
    for (int b = 0; b < B; b++)
        for (int c = c0; c < c1; c++)
            for (int h = r.lo; h < r.hi; h++) {
                const float *sp = band_row(src, b, c, h);
                float *dp = band_row(dst, b, c, h);
                uint64_t e = (((size_t)b * C + (size_t)c) * H + (size_t)h) * W;
                for (size_t w = 0; w < W; w++) {
                    uint32_t hh = (uint32_t)(mix64(key + (e + w) * 0x9e3779b97f4a7c15ull) >> 32);
                    dp[w] = hh >= threshold ? sp[w] * scale : 0.0f;
                }
            }
}

typedef struct {
    int train;
    uint64_t seed;
    const float *dz; /* the first dense layer's output gradient, B x out */
    float *z;        /* forward: its sums, B x out */
    float *chunk;
    size_t chunk_cap;
    fedge_grad_sink sink;
    void *sink_arg;
} psweep;

/* One walk over the bands of segment g. mode 0: forward (into w->z when the
 * segment ends the chain, else into the whole cut map); 1: backward over
 * every channel down to the segment's first layer or the first conv (the
 * last conv's weight sums, and the dense layer's gradient, only when that
 * conv learns in one block); 2: backward of the last conv's channels
 * [c0, c1) down to it. */
static int patch_sweep(pass *ps, psweep *w, int g, int mode, int c0, int c1)
{
    const fedge_model_spec *s = &ps->m->spec;
    const scratch_plan *p = &ps->plan;
    const float *params = ps->m->params;
    const int B = ps->batch, F = p->pF, fc = p->pfc, L = p->pL[g];
    const int j0 = p->pj0[g], j1 = p->pj1[g], last = j1 == F - 1;
    const fedge_layer *D = &s->layer[F + 1], *top = &s->layer[F - 1];
    const int TC = top->out_c, TH = top->out_h, TW = top->out_w, O = D->out;
    const size_t HW = (size_t)TH * TW, N = (size_t)TC * HW;
    const int nblk = L < 0 ? 0 : (s->layer[L].out + p->pob[g] - 1) / p->pob[g];
    const int hand = mode == 2 || (mode == 1 && nblk <= 1); /* dense W and conv L's sums */
    const int lowest = mode == 2 ? L : j0 > fc ? j0 : fc;
    const int cl = mode == 2 ? L : F; /* layers from cl on: channels [c0, c1) only */
    float *acc = ps->scratch + p->pacc_off, *biasL = ps->scratch + p->pbias_off;
    int dp[FEDGE_MODEL_MAX_LAYERS + 1], dc[FEDGE_MODEL_MAX_LAYERS + 1], ret = FEDGE_OK;
    rows_t fr[FEDGE_MODEL_MAX_LAYERS + 1];
    if (mode)
        for (int j = lowest; j <= j1; j++)
            if (p->pwown[j] == j && !p->pwwhole[j])
                memset(ps->scratch + p->pw_off[j], 0,
                       (size_t)B * s->layer[j].out_c * (size_t)p->pwrows[j] * s->layer[j].out_w *
                           sizeof(float));
    for (int t = 0; t < p->pT[g]; t++) {
        band_rows(s, p, g, t, mode != 0, dp, dc, fr);
        if (j0 == 0) {
            band_t xm = patch_fmap(ps, -1, fr[0].lo);
            const size_t dim = (size_t)s->input_dim;
            for (int b = 0; b < B; b++)
                for (int c = 0; c < s->in_c; c++)
                    for (int h = fr[0].lo; h < fr[0].hi; h++) {
                        float *d = band_row(&xm, b, c, h);
                        size_t at = (size_t)b * dim + ((size_t)c * s->in_h + (size_t)h) * s->in_w;
                        if (ps->xu8)
                            for (int q = 0; q < s->in_w; q++)
                                d[q] = (float)ps->xu8[at + (size_t)q] * ps->xscale;
                        else
                            memcpy(d, ps->x + at, (size_t)s->in_w * sizeof(float));
                    }
        }
        for (int j = j0; j <= j1; j++) {
            const fedge_layer *l = &s->layer[j];
            int a = j >= cl ? c0 : 0, e = j >= cl ? c1 : l->out_c;
            if (p->pfin[j])
                continue; /* computed inside its pool */
            band_t in = patch_fmap(ps, j - 1, fr[j].lo), out = patch_fmap(ps, j, fr[j + 1].lo);
            if (p->pfcv[j]) {
                const int jc = p->pfcv[j] - 1;
                const fedge_layer *lc = &s->layer[jc];
                band_t xin = patch_fmap(ps, jc - 1, fr[jc].lo);
                pfused(lc, l, params + lc->w_off, params + lc->b_off, &xin, &out, NULL, NULL, B,
                       fr[j + 1], a, e, relu_follows(s, jc), NULL, NULL, ps->scratch + p->prow_off);
            } else if (l->type == FEDGE_LAYER_CONV2D)
                pconv_fwd(l, params + l->w_off, params + l->b_off, &in, &out, B, fr[j + 1], a, e,
                          relu_follows(s, j));
            else if (l->type == FEDGE_LAYER_MAXPOOL)
                ppool_fwd(l, &in, &out, B, fr[j + 1], a, e);
            else if (l->type == FEDGE_LAYER_DROPOUT && w->train)
                pdrop(l, j, w->seed, &in, &out, B, fr[j + 1], a, e);
            else if (l->type == FEDGE_LAYER_DROPOUT)
                for (int b = 0; b < B; b++)
                    for (int c = a; c < e; c++)
                        for (int h = fr[j + 1].lo; h < fr[j + 1].hi; h++)
                            memcpy(band_row(&out, b, c, h), band_row(&in, b, c, h),
                                   (size_t)l->out_w * sizeof(float));
        }
        if (mode == 0 && !last)
            continue; /* the cut map's rows are in place */
        const rows_t tb = fr[F];
        const band_t tm = patch_fmap(ps, F - 1, tb.lo);
        const float *WD = params + D->w_off;
        const int ta = mode == 2 ? c0 : 0, te = mode == 2 ? c1 : TC;
        if (mode == 0) {
            for (int b = 0; b < B; b++)
                for (int o = 0; o < O; o++) {
                    float sum = 0.0f;
                    for (int c = 0; c < TC; c++)
                        for (int h = tb.lo; h < tb.hi; h++) {
                            const float *av = band_row(&tm, b, c, h);
                            const float *wr = WD + (size_t)o * N + (size_t)c * HW + (size_t)h * TW;
                            for (int q = 0; q < TW; q++)
                                sum += wr[q] * av[q];
                        }
                    w->z[(size_t)b * O + (size_t)o] += sum;
                }
            continue;
        }
        if (last) { /* the last map's gradient over the band: dz x W (W read before its step) */
            const band_t gt = patch_wmap(ps, F - 1, dp[F]);
            for (int b = 0; b < B; b++)
                for (int c = ta; c < te; c++)
                    for (int h = tb.lo; h < tb.hi; h++) {
                        float *gr = band_row(&gt, b, c, h);
                        for (int q = 0; q < TW; q++)
                            gr[q] = 0.0f;
                        for (int o = 0; o < O; o++) {
                            const float cf = w->dz[(size_t)b * O + (size_t)o];
                            const float *wr = WD + (size_t)o * N + (size_t)c * HW + (size_t)h * TW;
                            for (int q = 0; q < TW; q++)
                                gr[q] += cf * wr[q];
                        }
                    }
        }
        if (last && hand) { /* the dense layer's weight gradient over the band's columns */
            const size_t seg = (size_t)(tb.hi - tb.lo) * TW;
            for (int o = 0; o < O; o++)
                for (int c = ta; c < te; c++)
                    for (size_t q0 = 0; q0 < seg; q0 += w->chunk_cap) { /* slices of a chunk */
                        size_t nq = seg - q0 < w->chunk_cap ? seg - q0 : w->chunk_cap;
                        for (size_t q = 0; q < nq; q++)
                            w->chunk[q] = 0.0f;
                        for (int b = 0; b < B; b++) {
                            const float cf = w->dz[(size_t)b * O + (size_t)o];
                            const float *av = band_row(&tm, b, c, tb.lo) + q0;
                            for (size_t q = 0; q < nq; q++)
                                w->chunk[q] += cf * av[q];
                        }
                        CHK(w->sink(w->sink_arg,
                                    D->w_off + (size_t)o * N + (size_t)c * HW +
                                        (size_t)tb.lo * TW + q0,
                                    w->chunk, nq));
                    }
        }
        for (int j = j1; j >= lowest; j--) {
            const fedge_layer *l = &s->layer[j];
            const rows_t f = {dp[j + 1], dc[j + 1]};
            if (f.lo >= f.hi)
                continue;
            int a = j >= cl ? c0 : 0, e = j >= cl ? c1 : l->out_c;
            if (p->pfin[j])
                continue; /* its gradient went back inside the pool */
            band_t go = patch_wmap(ps, j, dp[j + 1]);
            if (p->pfcv[j]) {
                const int jc = p->pfcv[j] - 1;
                const fedge_layer *lc = &s->layer[jc];
                float *dw = jc == L ? (hand ? acc : NULL) : ps->scratch + p->plow_off[jc];
                float *db = jc == L ? (hand ? biasL : NULL)
                                    : ps->scratch + p->plow_off[jc] + (lc->b_off - lc->w_off);
                band_t xin = patch_fmap(ps, jc - 1, fr[jc].lo), gi = {0};
                int need_gin = jc > fc && !(mode == 2 && jc == L);
                if (need_gin)
                    gi = patch_wmap(ps, jc - 1, dp[jc]);
                pfused(lc, l, params + lc->w_off, params + lc->b_off, &xin, NULL, &go,
                       need_gin ? &gi : NULL, B, f, a, e, relu_follows(s, jc), dw, db,
                       ps->scratch + p->prow_off);
            } else if (l->type == FEDGE_LAYER_RELU) {
                band_t out = patch_fmap(ps, j, fr[j + 1].lo);
                for (int b = 0; b < B; b++)
                    for (int c = a; c < e; c++)
                        for (int h = f.lo; h < f.hi; h++) {
                            float *gr = band_row(&go, b, c, h);
                            const float *ov = band_row(&out, b, c, h);
                            for (int q = 0; q < l->out_w; q++) {
                                float v = gr[q];
                                gr[q] = ov[q] > 0.0f ? v : 0.0f;
                            }
                        }
            } else if (l->type == FEDGE_LAYER_DROPOUT) {
                if (w->train)
                    pdrop(l, j, w->seed, &go, &go, B, f, a, e);
            } else if (l->type == FEDGE_LAYER_MAXPOOL) {
                if (j - 1 >= fc) {
                    band_t in = patch_fmap(ps, j - 1, fr[j].lo), gi = patch_wmap(ps, j - 1, dp[j]);
                    ppool_bwd(l, &in, &go, &gi, B, f, a, e);
                }
            } else if (l->type == FEDGE_LAYER_CONV2D) {
                float *dw = j == L ? (hand ? acc : NULL) : ps->scratch + p->plow_off[j];
                float *db = j == L ? (hand ? biasL : NULL) : ps->scratch + p->plow_off[j] +
                                                               (l->b_off - l->w_off);
                band_t in = patch_fmap(ps, j - 1, fr[j].lo), gi = {0};
                int need_gin = j > fc && !(mode == 2 && j == L);
                if (need_gin)
                    gi = patch_wmap(ps, j - 1, dp[j]);
                pconv_bwd(l, params + l->w_off, &in, &go, need_gin ? &gi : NULL, B, f, a, e, dw,
                          db);
            }
        }
        for (int j = lowest; j <= j1; j++) { /* the windows move down past the complete rows */
            int n = dc[j + 1] - dp[j + 1], R = p->pwrows[j];
            if (p->pwown[j] != j || p->pwwhole[j] || n <= 0 || R == 0)
                continue;
            band_t m = patch_wmap(ps, j, 0);
            size_t rw = (size_t)m.W, keep = n < R ? (size_t)(R - n) : 0;
            for (int b = 0; b < B; b++)
                for (int c = 0; c < m.C; c++) {
                    float *q0 = band_row(&m, b, c, 0);
                    if (keep)
                        memmove(q0, q0 + (size_t)n * rw, keep * rw * sizeof(float));
                    memset(q0 + keep * rw, 0, ((size_t)R - keep) * rw * sizeof(float));
                }
        }
    }
cleanup:
    return ret;
}

/* Forward: the chain band by band into the first dense layer, then the
 * layers after it whole; softmax into the last buffer. */
static float *patch_forward(pass *ps, int train, uint64_t seed, const uint8_t *y, double *loss_sum)
{
    const fedge_model_spec *s = &ps->m->spec;
    const scratch_plan *p = &ps->plan;
    const float *params = ps->m->params;
    const int B = ps->batch, Di = p->pF + 1;
    const fedge_layer *D = &s->layer[Di];
    float *z = ps->scratch + p->ptail_off[Di];
    memset(z, 0, (size_t)B * D->out * sizeof(float));
    psweep w = {train, seed, NULL, z, NULL, 0, NULL, NULL};
    for (int g = 0; g < p->pnseg; g++)
        (void)patch_sweep(ps, &w, g, 0, 0, 0); /* no sink: no error */
    add_bias_rows(z, params + D->b_off, B, (size_t)D->out, relu_follows(s, Di));
    float *out = z;
    for (int i = Di + 1; i < s->n_layers; i++) {
        const fedge_layer *l = &s->layer[i];
        const float *in = out;
        out = ps->scratch + p->ptail_off[i];
        const size_t n = (size_t)l->in_c * l->in_h * l->in_w;
        if (l->type == FEDGE_LAYER_DENSE) {
            for (int b = 0; b < B; b++)
                for (int o = 0; o < l->out; o++) {
                    const float *wr = params + l->w_off + (size_t)o * n, *xr = in + (size_t)b * n;
                    float sum = 0.0f;
                    for (size_t q = 0; q < n; q++)
                        sum += wr[q] * xr[q];
                    out[(size_t)b * l->out + (size_t)o] = sum;
                }
            add_bias_rows(out, params + l->b_off, B, (size_t)l->out, relu_follows(s, i));
        } else if (l->type == FEDGE_LAYER_DROPOUT) {
            if (train)
                dropout_apply(l, i, seed, in, out, B, 0);
            else
                memcpy(out, in, (size_t)B * n * sizeof(float));
        }
    }
    softmax_rows(out, B, s->classes, y, loss_sum);
    return out;
}

/* Backward from g (dL/dlogits, B x classes): the layers after the first dense
 * one, its bias, then the sweeps over the chain (see the layout above). */
static int patch_backward(pass *ps, float *g, uint64_t seed, float *chunk, size_t chunk_cap,
                          fedge_grad_sink sink, void *sink_arg)
{
    const fedge_model_spec *s = &ps->m->spec;
    const scratch_plan *p = &ps->plan;
    const float *params = ps->m->params;
    const int B = ps->batch, Di = p->pF + 1, fc = p->pfc;
    const fedge_layer *D = &s->layer[Di];
    float *gb[2] = {ps->scratch + p->ptg_off[0], ps->scratch + p->ptg_off[1]};
    int ret = FEDGE_OK;
    for (int i = s->n_layers - 1; i > Di; i--) {
        const fedge_layer *l = &s->layer[i];
        const size_t n = (size_t)l->in_c * l->in_h * l->in_w, sz = (size_t)B * layer_size(l);
        if (l->type == FEDGE_LAYER_DENSE) {
            const float *in = ps->scratch + p->ptail_off[i - 1], *W = params + l->w_off;
            float *gin = g == gb[0] ? gb[1] : gb[0];
            for (size_t q = 0; q < (size_t)B * n; q++)
                gin[q] = 0.0f;
            for (int b = 0; b < B; b++) /* the input gradient first, with the weights before this step */
                for (int o = 0; o < l->out; o++) {
                    const float cf = g[(size_t)b * l->out + (size_t)o], *wr = W + (size_t)o * n;
                    float *gr = gin + (size_t)b * n;
                    for (size_t q = 0; q < n; q++)
                        gr[q] += cf * wr[q];
                }
            size_t rows = chunk_cap / n;
            for (int j0 = 0; j0 < l->out; j0 += (int)rows) {
                int r = l->out - j0 < (int)rows ? l->out - j0 : (int)rows;
                for (size_t q = 0; q < (size_t)r * n; q++)
                    chunk[q] = 0.0f;
                for (int b = 0; b < B; b++)
                    for (int o = j0; o < j0 + r; o++) {
                        const float cf = g[(size_t)b * l->out + (size_t)o];
                        const float *xr = in + (size_t)b * n;
                        float *d = chunk + (size_t)(o - j0) * n;
                        for (size_t q = 0; q < n; q++)
                            d[q] += cf * xr[q];
                    }
                CHK(sink(sink_arg, l->w_off + (size_t)j0 * n, chunk, (size_t)r * n));
            }
            col_sums(g, B, l->out, chunk);
            CHK(sink(sink_arg, l->b_off, chunk, (size_t)l->out));
            g = gin;
        } else if (l->type == FEDGE_LAYER_RELU) {
            const float *out = ps->scratch + p->ptail_off[i];
            for (size_t q = 0; q < sz; q++) {
                float v = g[q];
                g[q] = out[q] > 0.0f ? v : 0.0f;
            }
        } else if (l->type == FEDGE_LAYER_DROPOUT) {
            dropout_apply(l, i, seed, g, g, B, 0);
        }
    }
    col_sums(g, B, D->out, chunk);
    CHK(sink(sink_arg, D->b_off, chunk, (size_t)D->out));
    psweep w = {1, seed, g, NULL, chunk, chunk_cap, sink, sink_arg};
    if (p->pcut >= 0) { /* the cut map's gradient, whole: the upper segment adds to it */
        const fedge_layer *x = &s->layer[p->pwown[p->pcut]];
        memset(ps->scratch + p->pw_off[p->pwown[p->pcut]], 0,
               (size_t)B * x->out_c * (size_t)x->out_h * x->out_w * sizeof(float));
    }
    for (int sg = p->pnseg - 1; sg >= 0; sg--) {
        const int L = p->pL[sg], j0 = p->pj0[sg];
        if (L < 0) { /* no conv: the gradient passes through to the cut */
            CHK(patch_sweep(ps, &w, sg, 1, 0, 0));
            continue;
        }
        const fedge_layer *lL = &s->layer[L];
        const size_t K = (size_t)lL->in_c * lL->k * lL->k;
        memset(ps->scratch + p->pbias_off, 0, (size_t)lL->out * sizeof(float));
        for (int j = j0; j < L; j++)
            if (s->layer[j].type == FEDGE_LAYER_CONV2D)
                memset(ps->scratch + p->plow_off[j], 0, s->layer[j].n_params * sizeof(float));
        const int nblk = (lL->out + p->pob[sg] - 1) / p->pob[sg];
        if (nblk > 1 && L > fc) /* the gradient below the last conv, every channel */
            CHK(patch_sweep(ps, &w, sg, 1, 0, lL->out));
        const int per = chunk_cap / K > 0 ? (int)(chunk_cap / K) : 1;
        for (int c0 = 0; c0 < lL->out; c0 += p->pob[sg]) {
            int c1 = lL->out - c0 < p->pob[sg] ? lL->out : c0 + p->pob[sg];
            const float *acc = ps->scratch + p->pacc_off;
            memset(ps->scratch + p->pacc_off, 0, (size_t)(c1 - c0) * K * sizeof(float));
            CHK(patch_sweep(ps, &w, sg, nblk > 1 ? 2 : 1, c0, c1));
            for (int o = c0; o < c1; o += per) { /* that block's weights are read no more */
                int nb = c1 - o < per ? c1 - o : per;
                memcpy(chunk, acc + (size_t)(o - c0) * K, (size_t)nb * K * sizeof(float));
                CHK(sink(sink_arg, lL->w_off + (size_t)o * K, chunk, (size_t)nb * K));
            }
        }
        memcpy(chunk, ps->scratch + p->pbias_off, (size_t)lL->out * sizeof(float));
        CHK(sink(sink_arg, lL->b_off, chunk, (size_t)lL->out));
        for (int j = j0; j < L; j++) { /* the segment's lower convs: read by every band until now */
            const fedge_layer *l = &s->layer[j];
            if (l->type != FEDGE_LAYER_CONV2D)
                continue;
            const float *sums = ps->scratch + p->plow_off[j];
            const size_t Kj = (size_t)l->in_c * l->k * l->k;
            const int pj = chunk_cap / Kj > 0 ? (int)(chunk_cap / Kj) : 1;
            for (int o = 0; o < l->out; o += pj) {
                int nb = l->out - o < pj ? l->out - o : pj;
                memcpy(chunk, sums + (size_t)o * Kj, (size_t)nb * Kj * sizeof(float));
                CHK(sink(sink_arg, l->w_off + (size_t)o * Kj, chunk, (size_t)nb * Kj));
            }
            memcpy(chunk, sums + (l->b_off - l->w_off), (size_t)l->out * sizeof(float));
            CHK(sink(sink_arg, l->b_off, chunk, (size_t)l->out));
        }
    }
cleanup:
    return ret;
}

static float *forward_pass(pass *ps, const float *x, int train, uint64_t dropout_seed,
                           const uint8_t *y, double *loss_sum)
{
    const fedge_model_spec *s = &ps->m->spec;
    const float *params = ps->m->params;
    const int B = ps->batch;
    float *col = ps->scratch + ps->plan.col_off, *col0 = ps->scratch + ps->plan.col0_off;
    float *wt = ps->scratch + ps->plan.wt_off;
    float *out = NULL;
    if (ps->plan.patch) {
        if (ps->xu8 == NULL)
            ps->x = x;
        return patch_forward(ps, train, dropout_seed, y, loss_sum);
    }
    for (int i = 0; i < s->n_layers; i++) {
        const fedge_layer *l = &s->layer[i];
        const float *in = act_in(ps, x, i);
        int in_nhwc = act_in_nhwc(ps, i);
        out = act_out(ps, i);
        size_t in_size = (size_t)l->in_c * l->in_h * l->in_w;
        size_t n = (size_t)B * layer_size(l);
        int from_u8 = i == 0 && in == NULL; /* the u8 input, a block at a time */
        switch (l->type) {
        case FEDGE_LAYER_DENSE:
            if (from_u8)
                for (int r0 = 0; r0 < B; r0 += ps->plan.xin_rows) {
                    /* a short last block is taken xin_rows long, ending at the last row:
                     * a BLAS may sum a 1-row product (a GEMV) otherwise */
                    int rows = B < ps->plan.xin_rows ? B : ps->plan.xin_rows;
                    if (r0 + rows > B)
                        r0 = B - rows;
                    GEMM(ps, 0, 1, rows, l->out, (int)in_size, 1.0f,
                         xin_block(ps, r0, rows, 0, in_size), (int)in_size, params + l->w_off,
                         (int)in_size, 0.0f, out + (size_t)r0 * l->out, l->out);
                }
            else
                GEMM(ps, 0, 1, B, l->out, (int)in_size, 1.0f, in, (int)in_size,
                     params + l->w_off, (int)in_size, 0.0f, out, l->out);
            add_bias_rows(out, params + l->b_off, B, (size_t)l->out, relu_follows(s, i));
            break;
        case FEDGE_LAYER_CONV2D: {
            int K = l->in_c * l->k * l->k, P = B * l->out_h * l->out_w;
            if (ps->plan.lean) {
                int fused = ps->plan.fused[i];
                float *ct = ps->scratch + ps->plan.ct_off, *pooled = act_out(ps, i + 2 * fused);
                for (int b = 0; b < B; b++) {
                    if (!fused)
                        conv_rows(ps, i, in, in_nhwc, b, 0, l->out_h, 0, l->out_w,
                                  relu_follows(s, i), 0, l->out,
                                  out + (size_t)b * l->out_h * l->out_w * l->out);
                    else
                        for (int pr = 0; pr < l->out_h / 2; pr++)
                            for (int pc0 = 0; pc0 < l->out_w / 2; pc0 += ps->plan.tp[i]) {
                                int npc = l->out_w / 2 - pc0 < ps->plan.tp[i] ? l->out_w / 2 - pc0
                                                                               : ps->plan.tp[i];
                                conv_rows(ps, i, in, in_nhwc, b, 2 * pr, 2, 2 * pc0,
                                          2 * (pc0 + npc), 1, 0, l->out, ct);
                                pool_rows(&s->layer[i + 2], ct, pc0, npc, pooled,
                                          !ps->plan.nhwc[i + 2], b, pr);
                            }
                }
                if (fused) {
                    i += 2; /* the relu and the pool ran with it */
                    out = pooled;
                }
                break;
            }
            float *c = i == 0 ? col0 : col;
            if (from_u8)
                for (int b = 0; b < B; b++)
                    im2col(l, xin_block(ps, b, 1, 0, in_size), 0, 1,
                           c + (size_t)b * l->out_h * l->out_w * K, 0);
            else
                im2col(l, (float *)in, in_nhwc, B, c, 0);
            if (i > 0)
                ps->col_layer = i;
            permute_weights(l, params + l->w_off, wt, 1);
            GEMM(ps, 0, 0, P, l->out, K, 1.0f, c, K, wt, l->out, 0.0f, out, l->out);
            add_bias_rows(out, params + l->b_off, P, (size_t)l->out, relu_follows(s, i));
            break;
        }
        case FEDGE_LAYER_RELU:
            break; /* applied by the conv or dense layer before it */
        case FEDGE_LAYER_MAXPOOL:
            maxpool_forward(l, in, out, B, in_nhwc);
            break;
        case FEDGE_LAYER_FLATTEN:
            if (in_nhwc)
                flatten_copy(l, in, out, B, 1);
            else if (from_u8)
                for (size_t j = 0; j < n; j++)
                    out[j] = (float)ps->xu8[j] * ps->xscale;
            else if (i == 0)
                memcpy(out, in, n * sizeof(float)); /* the model input is not in scratch */
            break;
        case FEDGE_LAYER_DROPOUT:
            if (train)
                dropout_apply(l, i, dropout_seed, in, out, B, in_nhwc);
            else
                memcpy(out, in, n * sizeof(float));
            break;
        }
    }
    softmax_rows(out, B, s->classes, y, loss_sum);
    return out;
}

static int check_model(const fedge_model *m)
{
    char text[FEDGE_MODEL_SPEC_MAX];
    if (m == NULL || m->params == NULL || spec_check(&m->spec, text) != FEDGE_OK ||
        m->n_params != m->spec.n_params)
        return FEDGE_ERR_INVALID_ARG;
    return FEDGE_OK;
}

/* have: the scratch's floats (SIZE_MAX: fedge_model_scratch_floats's) */
static int pass_init(pass *ps, const fedge_model *m, int batch, float *scratch, size_t have)
{
    ps->m = m;
    ps->batch = batch;
    ps->scratch = scratch;
    ps->col_layer = -1;
    ps->wt_layer = -1;
    ps->xu8 = NULL;
    ps->x = NULL;
    ps->grad = NULL;
    ps->xscale = 0.0f;
    ps->err = FEDGE_OK;
    return plan_fit(&m->spec, batch, have, &ps->plan);
}

/* A u8 input: x is NULL (layer 0 reads it in blocks), or the whole minibatch
 * converted into xin when the first layer is a pool or dropout. */
static const float *pass_u8(pass *ps, const uint8_t *xu8, float scale)
{
    ps->xu8 = xu8;
    ps->xscale = scale;
    fedge_layer_type t = ps->m->spec.layer[0].type;
    if (t == FEDGE_LAYER_DENSE || t == FEDGE_LAYER_CONV2D || t == FEDGE_LAYER_FLATTEN)
        return NULL;
    return xin_block(ps, 0, ps->batch, 0, (size_t)ps->m->spec.input_dim);
}

int fedge_model_forward(const fedge_model *m, const float *x, int batch, float *scratch,
                        float *probs)
{
    if (check_model(m) != FEDGE_OK || x == NULL || batch < 1 || scratch == NULL || probs == NULL)
        return FEDGE_ERR_INVALID_ARG;
    pass ps;
    int ret = pass_init(&ps, m, batch, scratch, SIZE_MAX);
    if (ret != FEDGE_OK)
        return ret;
    const float *p = forward_pass(&ps, x, 0, 0, NULL, NULL);
    if (ps.err != FEDGE_OK)
        return ps.err;
    memcpy(probs, p, (size_t)batch * m->spec.classes * sizeof(float));
    return FEDGE_OK;
}

size_t fedge_model_grad_chunk_floats(const fedge_model_spec *spec)
{
    char text[FEDGE_MODEL_SPEC_MAX];
    if (spec == NULL || spec_check(spec, text) != FEDGE_OK)
        return 0;
    return grad_chunk_need(spec);
}

/* With sink: gradients go out in slices through chunk (see model.h), each
 * layer's after its input gradient is formed; without: into grad whole. */
static int loss_backward(const fedge_model *m, const float *x, const uint8_t *xu8, float xscale,
                         const uint8_t *y, int batch, uint64_t dropout_seed, float *scratch,
                         size_t have, float *grad, float *chunk, size_t chunk_floats,
                         fedge_grad_sink sink, void *sink_arg, float *loss)
{
    if (check_model(m) != FEDGE_OK || (x == NULL) == (xu8 == NULL) || y == NULL || batch < 1 ||
        scratch == NULL || (sink ? chunk == NULL : grad == NULL))
        return FEDGE_ERR_INVALID_ARG;
    size_t chunk_cap = sink ? fedge_model_grad_chunk_floats(&m->spec) : 0;
    if (sink && chunk_floats > chunk_cap)
        chunk_cap = chunk_floats; /* more dense rows per slice: the same sums */
    const fedge_model_spec *s = &m->spec;
    const float *params = m->params;
    const int B = batch;
    int ret = check_labels(y, (size_t)batch, s->classes);
    if (ret != FEDGE_OK)
        return ret;
    pass ps;
    ret = pass_init(&ps, m, batch, scratch, have);
    if (ret != FEDGE_OK)
        return ret;
    if (sink && !ps.plan.patch && chunk_floats > 0 && chunk_floats < chunk_cap &&
        plan_patch_fit(s, batch, have, &ps.plan) != FEDGE_OK)
        ret = plan_fit(s, batch, have, &ps.plan); /* no patch layout: the chunk is taken as the least */
    if (ret != FEDGE_OK)
        return ret;
    if (sink && ps.plan.patch && chunk_floats > 0 && chunk_floats < chunk_cap) {
        if (chunk_floats < patch_chunk_need(s, &ps.plan)) /* a smaller chunk: the patch pass's */
            return FEDGE_ERR_BUFFER_TOO_SMALL;
        chunk_cap = chunk_floats;
    }
    if (xu8 && ps.plan.patch) { /* read a band's input rows at a time */
        ps.xu8 = xu8;
        ps.xscale = xscale;
        x = NULL;
    } else if (xu8) {
        x = pass_u8(&ps, xu8, xscale);
    }
    ps.x = x;
    ps.grad = grad;

    double loss_sum = 0.0;
    float *g = forward_pass(&ps, x, 1, dropout_seed, y, &loss_sum);
    if (ps.err != FEDGE_OK)
        return ps.err;
    if (loss != NULL)
        *loss = (float)(loss_sum / batch);
    if (sink && !isfinite((float)(loss_sum / batch)))
        return FEDGE_ERR_MODEL_NONFINITE; /* before any slice could step */
    const float inv_b = 1.0f / (float)batch;
    for (int i = 0; i < batch; i++) {
        float *row = g + (size_t)i * s->classes;
        row[y[i]] -= 1.0f;
        for (int c = 0; c < s->classes; c++)
            row[c] *= inv_b;
    }

    if (ps.plan.patch)
        return sink ? patch_backward(&ps, g, dropout_seed, chunk, chunk_cap, sink, sink_arg)
                    : FEDGE_ERR_INVALID_ARG; /* a whole gradient takes the full layout */
    float *gbuf[2] = {scratch + ps.plan.g_off[0], scratch + ps.plan.g_off[1]};
    float *col = scratch + ps.plan.col_off, *col0 = scratch + ps.plan.col0_off;
    float *wt = scratch + ps.plan.wt_off;
    int first_param = 0;
    while (s->layer[first_param].n_params == 0) /* the last layer is dense */
        first_param++;
    for (int i = s->n_layers - 1; i >= 0; i--) {
        const fedge_layer *l = &s->layer[i];
        const float *in = act_in(&ps, x, i);
        int in_nhwc = act_in_nhwc(&ps, i);
        float *gin = g == gbuf[0] ? gbuf[1] : gbuf[0]; /* where dL/d(input) goes */
        size_t in_size = (size_t)l->in_c * l->in_h * l->in_w;
        size_t n = (size_t)B * layer_size(l);
        int need_gin = i > first_param; /* no layer before it learns: no input gradient */
        switch (l->type) {
        case FEDGE_LAYER_DENSE: {
            if (sink) {
                /* the input gradient first, with the weights before this step */
                if (need_gin)
                    GEMM(&ps, 0, 0, B, (int)in_size, l->out, 1.0f, g, l->out, params + l->w_off,
                         (int)in_size, 0.0f, gin, (int)in_size);
                size_t rows = chunk_cap / in_size;
                for (int j0 = 0; j0 < l->out; j0 += (int)rows) {
                    int r = l->out - j0 < (int)rows ? l->out - j0 : (int)rows;
                    if (in == NULL)
                        dense_grad_u8(&ps, l, g, j0, r, chunk);
                    else
                        GEMM(&ps, 1, 0, r, (int)in_size, B, 1.0f, g + j0, l->out, in,
                             (int)in_size, 0.0f, chunk, (int)in_size);
                    CHK(sink(sink_arg, l->w_off + (size_t)j0 * in_size, chunk, (size_t)r * in_size));
                }
                for (int j = 0; j < l->out; j++)
                    chunk[j] = 0.0f;
                for (int r = 0; r < B; r++) {
                    const float *row = g + (size_t)r * l->out;
                    for (int j = 0; j < l->out; j++)
                        chunk[j] += row[j];
                }
                CHK(sink(sink_arg, l->b_off, chunk, (size_t)l->out));
                if (need_gin)
                    g = gin;
                break;
            }
            float *gW = grad + l->w_off, *gb = grad + l->b_off;
            if (in == NULL)
                dense_grad_u8(&ps, l, g, 0, l->out, gW);
            else
                GEMM(&ps, 1, 0, l->out, (int)in_size, B, 1.0f, g, l->out, in, (int)in_size, 0.0f,
                     gW, (int)in_size);
            for (int j = 0; j < l->out; j++)
                gb[j] = 0.0f;
            for (int r = 0; r < B; r++) {
                const float *row = g + (size_t)r * l->out;
                for (int j = 0; j < l->out; j++)
                    gb[j] += row[j];
            }
            if (need_gin) {
                GEMM(&ps, 0, 0, B, (int)in_size, l->out, 1.0f, g, l->out, params + l->w_off,
                     (int)in_size, 0.0f, gin, (int)in_size);
                g = gin;
            }
            break;
        }
        case FEDGE_LAYER_CONV2D: {
            int K = l->in_c * l->k * l->k, P = B * l->out_h * l->out_w, O = l->out;
            float *lw = sink ? NULL : grad + l->w_off, *gb = sink ? NULL : grad + l->b_off;
            if (ps.plan.lean) {
                if (ps.plan.stream[i])
                    gin = scratch + ps.plan.ring_off;
                CHK(lean_conv_backward(&ps, i, in, in_nhwc, g, 0, need_gin ? gin : NULL, lw, gb,
                                       chunk, sink, sink_arg));
                if (need_gin)
                    g = gin;
                if (need_gin && ps.plan.stream[i])
                    i = ps.plan.stream[i] - 1; /* that conv, its relu and pool are done */
                break;
            }
            if (sink) {
                /* the input gradient first, with the weights before any step; the
                 * weight gradient then (the input's im2col again where the input
                 * gradient took col) goes out a slice of whole output channels at a
                 * time, the biases last */
                if (need_gin) {
                    permute_weights(l, params + l->w_off, wt, 1);
                    GEMM(&ps, 0, 1, P, K, O, 1.0f, g, O, wt, O, 0.0f, col, K);
                    memset(gin, 0, (size_t)B * in_size * sizeof(float));
                    im2col(l, gin, in_nhwc, B, col, 1);
                    ps.col_layer = -1;
                }
                float *c = i == 0 ? col0 : col;
                if (i > 0 && ps.col_layer != i) {
                    im2col(l, (float *)in, in_nhwc, B, col, 0);
                    ps.col_layer = i;
                }
                if (O <= K)
                    GEMM(&ps, 1, 0, O, K, P, 1.0f, g, O, c, K, 0.0f, wt, K); /* OHWI */
                else
                    GEMM(&ps, 1, 0, K, O, P, 1.0f, c, K, g, O, 0.0f, wt, O); /* HWIO */
                if (ps.err != FEDGE_OK)
                    return ps.err;
                const size_t C = (size_t)l->in_c, kk = (size_t)l->k * l->k;
                const int per = (int)(chunk_cap / (size_t)K);
                for (int o0 = 0; o0 < O; o0 += per) {
                    int nb = O - o0 < per ? O - o0 : per;
                    if (O <= K) {
                        fedge_layer lb = *l;
                        lb.out = nb;
                        ohwi_to_oihw(&lb, wt + (size_t)o0 * K, chunk);
                    } else {
                        for (int o = o0; o < o0 + nb; o++)
                            for (size_t ci = 0; ci < C; ci++)
                                for (size_t q = 0; q < kk; q++)
                                    chunk[((size_t)(o - o0) * C + ci) * kk + q] =
                                        wt[(q * C + ci) * (size_t)O + (size_t)o];
                    }
                    CHK(sink(sink_arg, l->w_off + (size_t)o0 * K, chunk, (size_t)nb * K));
                }
                col_sums(g, P, O, chunk);
                CHK(sink(sink_arg, l->b_off, chunk, (size_t)O));
                if (need_gin)
                    g = gin;
                break;
            }
            col_sums(g, P, O, gb);
            float *c = i == 0 ? col0 : col; /* col0 and the last conv's col: from forward */
            if (i > 0 && ps.col_layer != i)
                im2col(l, (float *)in, in_nhwc, B, col, 0);
            if (O <= K) { /* the smaller side as GEMM rows: OHWI [O x K], then to OIHW */
                float *gw = l->in_c == 1 ? lw : wt; /* OHWI = OIHW */
                GEMM(&ps, 1, 0, O, K, P, 1.0f, g, O, c, K, 0.0f, gw, K);
                if (l->in_c > 1)
                    ohwi_to_oihw(l, wt, lw);
            } else {
                GEMM(&ps, 1, 0, K, O, P, 1.0f, c, K, g, O, 0.0f, wt, O);
                permute_weights(l, wt, lw, 0);
            }
            if (need_gin) {
                ps.col_layer = -1;
                permute_weights(l, params + l->w_off, wt, 1);
                GEMM(&ps, 0, 1, P, K, O, 1.0f, g, O, wt, O, 0.0f, col, K);
                memset(gin, 0, (size_t)B * in_size * sizeof(float));
                im2col(l, gin, in_nhwc, B, col, 1);
                g = gin;
            }
            if (sink)
                CHK(sink(sink_arg, l->w_off, chunk, (size_t)l->n_params));
            break;
        }
        case FEDGE_LAYER_RELU: {
            const float *out = act_out(&ps, i);
            if (need_gin && !pool_fuses_relu(s, ps.plan.nhwc, i))
                for (size_t j = 0; j < n; j++) {
                    float v = g[j]; /* loaded unconditionally: the loop vectorises */
                    g[j] = out[j] > 0.0f ? v : 0.0f; /* ReLU'(z) via its output */
                }
            break;
        }
        case FEDGE_LAYER_MAXPOOL:
            if (ps.plan.lean && i >= 2 && ps.plan.fused[i - 2]) { /* with its conv and relu */
                const fedge_layer *cl = &s->layer[i - 2];
                int cneed = i - 2 > first_param;
                if (ps.plan.stream[i - 2])
                    gin = scratch + ps.plan.ring_off;
                float *lw = sink ? NULL : grad + cl->w_off;
                float *gb = sink ? NULL : grad + cl->b_off;
                CHK(lean_conv_backward(&ps, i - 2, act_in(&ps, x, i - 2), act_in_nhwc(&ps, i - 2),
                                       g, !ps.plan.nhwc[i], cneed ? gin : NULL, lw, gb, chunk, sink,
                                       sink_arg));
                if (cneed)
                    g = gin;
                i -= 2;
                if (cneed && ps.plan.stream[i])
                    i = ps.plan.stream[i] - 1; /* that conv, its relu and pool are done */
                break;
            }
            if (need_gin) {
                maxpool_backward(l, in, g, gin, B, in_nhwc, pool_fuses_relu(s, ps.plan.nhwc, i - 1));
                g = gin;
            }
            break;
        case FEDGE_LAYER_FLATTEN:
            if (need_gin && in_nhwc) {
                flatten_copy(l, g, gin, B, 0);
                g = gin;
            }
            break;
        case FEDGE_LAYER_DROPOUT:
            if (need_gin)
                dropout_apply(l, i, dropout_seed, g, g, B, in_nhwc);
            break;
        }
        if (ps.err != FEDGE_OK)
            return ps.err;
    }
cleanup:
    return ret;
}

int fedge_model_loss_grad(const fedge_model *m, const float *x, const uint8_t *y, int batch,
                          uint64_t dropout_seed, float *scratch, float *grad, float *loss)
{
    if (x == NULL)
        return FEDGE_ERR_INVALID_ARG;
    return loss_backward(m, x, NULL, 0.0f, y, batch, dropout_seed, scratch, SIZE_MAX, grad, NULL,
                         0, NULL, NULL, loss);
}

int fedge_model_loss_grad_sliced_n(const fedge_model *m, const float *x, const uint8_t *y,
                                   int batch, uint64_t dropout_seed, float *scratch,
                                   size_t scratch_floats, float *chunk, size_t chunk_floats,
                                   fedge_grad_sink sink, void *sink_arg, float *loss)
{
    if (sink == NULL || x == NULL)
        return FEDGE_ERR_INVALID_ARG;
    return loss_backward(m, x, NULL, 0.0f, y, batch, dropout_seed, scratch, scratch_floats, NULL,
                         chunk, chunk_floats, sink, sink_arg, loss);
}

int fedge_model_loss_grad_sliced(const fedge_model *m, const float *x, const uint8_t *y,
                                 int batch, uint64_t dropout_seed, float *scratch, float *chunk,
                                 fedge_grad_sink sink, void *sink_arg, float *loss)
{
    return fedge_model_loss_grad_sliced_n(m, x, y, batch, dropout_seed, scratch, SIZE_MAX, chunk,
                                          0, sink, sink_arg, loss);
}

int fedge_model_loss_grad_sliced_u8_n(const fedge_model *m, const uint8_t *x, float scale,
                                      const uint8_t *y, int batch, uint64_t dropout_seed,
                                      float *scratch, size_t scratch_floats, float *chunk,
                                      size_t chunk_floats, fedge_grad_sink sink, void *sink_arg,
                                      float *loss)
{
    if (sink == NULL || x == NULL || !isfinite(scale))
        return FEDGE_ERR_INVALID_ARG;
    return loss_backward(m, NULL, x, scale, y, batch, dropout_seed, scratch, scratch_floats, NULL,
                         chunk, chunk_floats, sink, sink_arg, loss);
}

int fedge_model_loss_grad_sliced_u8(const fedge_model *m, const uint8_t *x, float scale,
                                    const uint8_t *y, int batch, uint64_t dropout_seed,
                                    float *scratch, float *chunk, fedge_grad_sink sink,
                                    void *sink_arg, float *loss)
{
    return fedge_model_loss_grad_sliced_u8_n(m, x, scale, y, batch, dropout_seed, scratch,
                                             SIZE_MAX, chunk, 0, sink, sink_arg, loss);
}

int fedge_model_evaluate(const fedge_model *m, const float *x, const uint8_t *y, size_t n,
                         int batch, float *scratch, size_t *n_correct, double *loss_sum)
{
    return fedge_model_evaluate_n(m, x, y, n, batch, scratch, SIZE_MAX, n_correct, loss_sum);
}

int fedge_model_evaluate_n(const fedge_model *m, const float *x, const uint8_t *y, size_t n,
                           int batch, float *scratch, size_t scratch_floats, size_t *n_correct,
                           double *loss_sum)
{
    if (check_model(m) != FEDGE_OK || (n > 0 && (x == NULL || y == NULL)) || batch < 1 ||
        scratch == NULL)
        return FEDGE_ERR_INVALID_ARG;
    const fedge_model_spec *s = &m->spec;
    int classes = s->classes;
    int ret = check_labels(y, n, classes);
    if (ret != FEDGE_OK)
        return ret;
    size_t correct = 0;
    double total = 0.0;
    for (size_t r0 = 0; r0 < n; r0 += (size_t)batch) {
        int rows = n - r0 < (size_t)batch ? (int)(n - r0) : batch;
        pass ps;
        ret = pass_init(&ps, m, rows, scratch, scratch_floats);
        if (ret != FEDGE_OK)
            return ret;
        const float *p = forward_pass(&ps, x + r0 * (size_t)s->input_dim, 0, 0, y + r0, &total);
        if (ps.err != FEDGE_OK)
            return ps.err;
        for (int i = 0; i < rows; i++) {
            const float *row = p + (size_t)i * classes;
            int best = 0;
            for (int c = 1; c < classes; c++)
                if (row[c] > row[best])
                    best = c;
            correct += best == y[r0 + i];
        }
    }
    if (n_correct != NULL)
        *n_correct = correct;
    if (loss_sum != NULL)
        *loss_sum = total;
    return FEDGE_OK;
}

/* model.c — softmax regression and ReLU MLPs over one flat parameter buffer.
 *
 * Scratch layout for a batch of B rows (floats):
 *   act_l   B x dims[l+1]  for every layer l: post-ReLU activations of the
 *                          hidden layers, then the class probabilities
 *   delta   B x max hidden width (MLP only): dL/dA of a hidden layer
 * The backward pass overwrites each act_l with its own dL/dZ in place. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/sha256.h>

#include "common.h"
#include "model.h"

/* ---- spec -------------------------------------------------------------- */

static int spec_check(const fedge_model_spec *s)
{
    if (s == NULL || s->n_layers < 1 || s->n_layers > FEDGE_MODEL_MAX_LAYERS)
        return FEDGE_ERR_MODEL_SPEC;
    if (s->kind == FEDGE_MODEL_SOFTMAX) {
        if (s->n_layers != 1)
            return FEDGE_ERR_MODEL_SPEC;
    } else if (s->kind == FEDGE_MODEL_MLP) {
        if (s->n_layers < 2)
            return FEDGE_ERR_MODEL_SPEC;
    } else {
        return FEDGE_ERR_MODEL_SPEC;
    }
    uint64_t params = 0;
    for (int l = 0; l <= s->n_layers; l++)
        if (s->dims[l] < 1 || s->dims[l] > FEDGE_MODEL_MAX_DIM)
            return FEDGE_ERR_MODEL_SPEC;
    if (s->dims[s->n_layers] < 2 || s->dims[s->n_layers] > FEDGE_MODEL_MAX_CLASSES)
        return FEDGE_ERR_MODEL_SPEC;
    for (int l = 0; l < s->n_layers; l++)
        params += (uint64_t)s->dims[l + 1] * ((uint64_t)s->dims[l] + 1);
    if (params > FEDGE_MODEL_MAX_PARAMS)
        return FEDGE_ERR_MODEL_SPEC;
    return FEDGE_OK;
}

int fedge_model_spec_parse(const char *text, fedge_model_spec *out)
{
    if (text == NULL || out == NULL)
        return FEDGE_ERR_INVALID_ARG;
    fedge_model_spec s;
    memset(&s, 0, sizeof s);
    const char *p;
    if (strncmp(text, "softmax:", 8) == 0) {
        s.kind = FEDGE_MODEL_SOFTMAX;
        p = text + 8;
    } else if (strncmp(text, "mlp:", 4) == 0) {
        s.kind = FEDGE_MODEL_MLP;
        p = text + 4;
    } else {
        return FEDGE_ERR_MODEL_SPEC;
    }
    int n_dims = 0;
    for (;;) {
        if (n_dims > FEDGE_MODEL_MAX_LAYERS)
            return FEDGE_ERR_MODEL_SPEC; /* too many layers */
        /* Plain decimal, no sign, no leading zero: every accepted text is canonical. */
        if (*p < '1' || *p > '9')
            return FEDGE_ERR_MODEL_SPEC;
        long v = 0;
        while (*p >= '0' && *p <= '9') {
            v = v * 10 + (*p - '0');
            if (v > FEDGE_MODEL_MAX_DIM)
                return FEDGE_ERR_MODEL_SPEC;
            p++;
        }
        s.dims[n_dims++] = (int)v;
        if (*p == '\0')
            break;
        if (*p != '-')
            return FEDGE_ERR_MODEL_SPEC;
        p++;
    }
    s.n_layers = n_dims - 1;
    int ret = spec_check(&s);
    if (ret != FEDGE_OK)
        return ret;
    *out = s;
    return FEDGE_OK;
}

int fedge_model_spec_format(const fedge_model_spec *spec, char *buf, size_t cap)
{
    if (spec == NULL || buf == NULL || cap == 0)
        return FEDGE_ERR_INVALID_ARG;
    if (spec_check(spec) != FEDGE_OK)
        return FEDGE_ERR_MODEL_SPEC;
    char tmp[FEDGE_MODEL_SPEC_MAX];
    size_t len = (size_t)snprintf(tmp, sizeof tmp, "%s:%d",
                                  spec->kind == FEDGE_MODEL_SOFTMAX ? "softmax" : "mlp",
                                  spec->dims[0]);
    for (int l = 1; l <= spec->n_layers; l++)
        len += (size_t)snprintf(tmp + len, sizeof tmp - len, "-%d", spec->dims[l]);
    /* the longest, "mlp:" and 9 five-digit dims, is 57 bytes */
    if (len + 1 > cap)
        return FEDGE_ERR_BUFFER_TOO_SMALL;
    memcpy(buf, tmp, len + 1);
    return FEDGE_OK;
}

size_t fedge_model_spec_param_count(const fedge_model_spec *spec)
{
    if (spec_check(spec) != FEDGE_OK)
        return 0;
    size_t n = 0;
    for (int l = 0; l < spec->n_layers; l++)
        n += (size_t)spec->dims[l + 1] * ((size_t)spec->dims[l] + 1);
    return n;
}

uint32_t fedge_model_spec_id(const fedge_model_spec *spec)
{
    char text[FEDGE_MODEL_SPEC_MAX];
    unsigned char digest[32];
    if (fedge_model_spec_format(spec, text, sizeof text) != FEDGE_OK)
        return 0;
    if (mbedtls_sha256_ret((const unsigned char *)text, strlen(text), digest, 0) != 0)
        return 0;
    return (uint32_t)digest[0] | (uint32_t)digest[1] << 8 | (uint32_t)digest[2] << 16 |
           (uint32_t)digest[3] << 24;
}

/* ---- model ------------------------------------------------------------- */

void fedge_model_views(const fedge_model_spec *spec, float *base,
                       float *W[FEDGE_MODEL_MAX_LAYERS], float *b[FEDGE_MODEL_MAX_LAYERS])
{
    float *p = base;
    for (int l = 0; l < FEDGE_MODEL_MAX_LAYERS; l++) {
        if (l < spec->n_layers) {
            W[l] = p;
            p += (size_t)spec->dims[l + 1] * spec->dims[l];
            b[l] = p;
            p += spec->dims[l + 1];
        } else {
            W[l] = NULL;
            b[l] = NULL;
        }
    }
}

int fedge_model_init(fedge_model *m, const fedge_model_spec *spec)
{
    if (m == NULL || spec == NULL)
        return FEDGE_ERR_INVALID_ARG;
    memset(m, 0, sizeof *m);
    if (spec_check(spec) != FEDGE_OK)
        return FEDGE_ERR_MODEL_SPEC;
    m->spec = *spec;
    m->n_params = fedge_model_spec_param_count(spec);
    m->params = calloc(m->n_params, sizeof(float));
    if (m->params == NULL) {
        memset(m, 0, sizeof *m);
        return FEDGE_ERR_NOMEM;
    }
    fedge_model_views(spec, m->params, m->W, m->b);
    return FEDGE_OK;
}

void fedge_model_free(fedge_model *m)
{
    if (m == NULL)
        return;
    free(m->params);
    memset(m, 0, sizeof *m);
}

int fedge_model_randomize(fedge_model *m, fedge_rng *rng)
{
    if (m == NULL || m->params == NULL || rng == NULL)
        return FEDGE_ERR_INVALID_ARG;
    for (int l = 0; l < m->spec.n_layers; l++) {
        int in = m->spec.dims[l], out = m->spec.dims[l + 1];
        float limit = sqrtf(6.0f / (float)in);
        size_t nw = (size_t)out * in;
        for (size_t i = 0; i < nw; i++)
            m->W[l][i] = (2.0f * fedge_rng_uniform(rng) - 1.0f) * limit;
        memset(m->b[l], 0, (size_t)out * sizeof(float));
    }
    return FEDGE_OK;
}

static int max_hidden_width(const fedge_model_spec *spec)
{
    int w = 0;
    for (int l = 1; l < spec->n_layers; l++)
        if (spec->dims[l] > w)
            w = spec->dims[l];
    return w;
}

size_t fedge_model_scratch_floats(const fedge_model_spec *spec, int batch)
{
    if (spec_check(spec) != FEDGE_OK || batch < 1)
        return 0;
    size_t per_row = (size_t)max_hidden_width(spec);
    for (int l = 1; l <= spec->n_layers; l++)
        per_row += (size_t)spec->dims[l];
    return per_row * (size_t)batch;
}

/* Output of layer l inside scratch. */
static float *act_ptr(const fedge_model_spec *spec, float *scratch, int batch, int l)
{
    size_t off = 0;
    for (int j = 0; j < l; j++)
        off += (size_t)batch * spec->dims[j + 1];
    return scratch + off;
}

static float *delta_ptr(const fedge_model_spec *spec, float *scratch, int batch)
{
    return act_ptr(spec, scratch, batch, spec->n_layers);
}

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

/* Dense layers and softmax; returns the probabilities (inside scratch). */
static float *forward_pass(const fedge_model *m, const float *x, int batch, float *scratch,
                           const uint8_t *y, double *loss_sum)
{
    const fedge_model_spec *s = &m->spec;
    const float *in = x;
    float *out = scratch;
    for (int l = 0; l < s->n_layers; l++) {
        int din = s->dims[l], dout = s->dims[l + 1];
        out = act_ptr(s, scratch, batch, l);
        fedge_sgemm(0, 1, batch, dout, din, 1.0f, in, din, m->W[l], din, 0.0f, out, dout);
        const float *bias = m->b[l];
        int hidden = l + 1 < s->n_layers;
        for (int i = 0; i < batch; i++) {
            float *row = out + (size_t)i * dout;
            for (int j = 0; j < dout; j++) {
                float v = row[j] + bias[j];
                row[j] = hidden && v < 0.0f ? 0.0f : v; /* ReLU; NaN passes through */
            }
        }
        in = out;
    }
    softmax_rows(out, batch, s->dims[s->n_layers], y, loss_sum);
    return out;
}

static int check_model(const fedge_model *m)
{
    if (m == NULL || m->params == NULL || spec_check(&m->spec) != FEDGE_OK)
        return FEDGE_ERR_INVALID_ARG;
    return FEDGE_OK;
}

int fedge_model_forward(const fedge_model *m, const float *x, int batch, float *scratch,
                        float *probs)
{
    if (check_model(m) != FEDGE_OK || x == NULL || batch < 1 || scratch == NULL || probs == NULL)
        return FEDGE_ERR_INVALID_ARG;
    const float *p = forward_pass(m, x, batch, scratch, NULL, NULL);
    memcpy(probs, p, (size_t)batch * m->spec.dims[m->spec.n_layers] * sizeof(float));
    return FEDGE_OK;
}

int fedge_model_loss_grad(const fedge_model *m, const float *x, const uint8_t *y, int batch,
                          float *scratch, float *grad, float *loss)
{
    if (check_model(m) != FEDGE_OK || x == NULL || y == NULL || batch < 1 || scratch == NULL ||
        grad == NULL)
        return FEDGE_ERR_INVALID_ARG;
    const fedge_model_spec *s = &m->spec;
    int L = s->n_layers;
    int classes = s->dims[L];
    int ret = check_labels(y, (size_t)batch, classes);
    if (ret != FEDGE_OK)
        return ret;

    double loss_sum = 0.0;
    float *dz = forward_pass(m, x, batch, scratch, y, &loss_sum);
    if (loss != NULL)
        *loss = (float)(loss_sum / batch);

    /* dL/dZ of the output layer for the mean loss: (P - onehot(y)) / B */
    float inv_b = 1.0f / (float)batch;
    for (int i = 0; i < batch; i++) {
        float *row = dz + (size_t)i * classes;
        row[y[i]] -= 1.0f;
        for (int c = 0; c < classes; c++)
            row[c] *= inv_b;
    }

    float *gW[FEDGE_MODEL_MAX_LAYERS], *gb[FEDGE_MODEL_MAX_LAYERS];
    fedge_model_views(s, grad, gW, gb);
    float *delta = delta_ptr(s, scratch, batch);
    for (int l = L - 1; l >= 0; l--) {
        int din = s->dims[l], dout = s->dims[l + 1];
        const float *in = l == 0 ? x : act_ptr(s, scratch, batch, l - 1);
        fedge_sgemm(1, 0, dout, din, batch, 1.0f, dz, dout, in, din, 0.0f, gW[l], din);
        for (int j = 0; j < dout; j++)
            gb[l][j] = 0.0f;
        for (int i = 0; i < batch; i++) {
            const float *row = dz + (size_t)i * dout;
            for (int j = 0; j < dout; j++)
                gb[l][j] += row[j];
        }
        if (l == 0)
            break; /* no gradient with respect to the input */
        fedge_sgemm(0, 0, batch, din, dout, 1.0f, dz, dout, m->W[l], din, 0.0f, delta, din);
        float *a = act_ptr(s, scratch, batch, l - 1);
        size_t na = (size_t)batch * din;
        for (size_t i = 0; i < na; i++)
            a[i] = a[i] > 0.0f ? delta[i] : 0.0f; /* ReLU'(z) via its output */
        dz = a;
    }
    return FEDGE_OK;
}

int fedge_model_evaluate(const fedge_model *m, const float *x, const uint8_t *y, size_t n,
                         int batch, float *scratch, size_t *n_correct, double *loss_sum)
{
    if (check_model(m) != FEDGE_OK || (n > 0 && (x == NULL || y == NULL)) || batch < 1 ||
        scratch == NULL)
        return FEDGE_ERR_INVALID_ARG;
    const fedge_model_spec *s = &m->spec;
    int classes = s->dims[s->n_layers];
    int ret = check_labels(y, n, classes);
    if (ret != FEDGE_OK)
        return ret;
    size_t correct = 0;
    double total = 0.0;
    for (size_t r0 = 0; r0 < n; r0 += (size_t)batch) {
        int rows = n - r0 < (size_t)batch ? (int)(n - r0) : batch;
        const float *p = forward_pass(m, x + r0 * s->dims[0], rows, scratch, y + r0, &total);
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

#include "server.h"

#include <netdb.h>
#include <stdlib.h>
#include <string.h>

#include <coap3/coap.h>

#include "common.h"
#include "log.h"

/* A model body handed to libcoap for a Block2 transfer; it stays alive until
 * libcoap releases it, even when the round closes and a new model appears. */
typedef struct {
    int refs;
    size_t len;
    uint64_t etag;
    uint8_t data[];
} model_body;

struct fedge_server {
    fedge_aggregator *agg;
    coap_context_t *ctx;
    coap_bin_const_t *psks;     /* parallel to agg->keys.devices */
    char (*psk_text)[FEDGE_PSK_LEN + 1];
    model_body *body;           /* current model, one reference held here */
    char body_version[FEDGE_HASH_HEX_LEN];
};

static fedge_server *g_server; /* libcoap 4.3.1 has no context user data */

static void body_unref(model_body *b)
{
    if (b && --b->refs == 0)
        free(b);
}

static void body_release(coap_session_t *session, void *app_ptr)
{
    (void)session;
    body_unref(app_ptr);
}

static uint64_t etag_of(const uint8_t version[FEDGE_HASH_LEN])
{
    uint64_t e = 0;
    for (int i = 0; i < 8; i++)
        e = e << 8 | version[i];
    return e;
}

static int current_body(fedge_server *s, model_body **out)
{
    fedge_aggregator *a = s->agg;
    if (!s->body || strcmp(s->body_version, a->version_hex) != 0) {
        model_body *b = malloc(sizeof *b + a->model_blob_len);
        if (!b)
            return FEDGE_ERR_NOMEM;
        b->refs = 1;
        b->len = a->model_blob_len;
        b->etag = etag_of(a->version);
        memcpy(b->data, a->model_blob, a->model_blob_len);
        body_unref(s->body);
        s->body = b;
        memcpy(s->body_version, a->version_hex, sizeof s->body_version);
    }
    *out = s->body;
    return FEDGE_OK;
}

/* Device id of the requester: the DTLS PSK identity, or ?id= when insecure. */
static int requester(const fedge_server *s, coap_session_t *session, const coap_string_t *query,
                     char id[FEDGE_DEVICE_ID_MAX + 1])
{
    id[0] = '\0';
    if (!s->agg->cfg.insecure) {
        const coap_bin_const_t *ident = coap_session_get_psk_identity(session);
        if (!ident || !fedge_device_id_valid((const char *)ident->s, ident->length))
            return 0;
        memcpy(id, ident->s, ident->length);
        id[ident->length] = '\0';
        return 1;
    }
    if (!query)
        return 0;
    const char *q = (const char *)query->s;
    size_t n = query->length;
    for (size_t i = 0; i + 3 <= n; i++) {
        if ((i == 0 || q[i - 1] == '&') && memcmp(q + i, "id=", 3) == 0) {
            size_t start = i + 3, end = start;
            while (end < n && q[end] != '&')
                end++;
            if (!fedge_device_id_valid(q + start, end - start))
                return 0;
            memcpy(id, q + start, end - start);
            id[end - start] = '\0';
            return 1;
        }
    }
    return 0;
}

static void set_text(coap_pdu_t *response, coap_pdu_code_t code, const char *text)
{
    uint8_t buf[4];
    coap_pdu_set_code(response, code);
    coap_add_option(response, COAP_OPTION_CONTENT_FORMAT,
                    coap_encode_var_safe(buf, sizeof buf, COAP_MEDIATYPE_TEXT_PLAIN), buf);
    coap_add_data(response, strlen(text), (const uint8_t *)text);
}

static void hnd_round(coap_resource_t *r, coap_session_t *session, const coap_pdu_t *request,
                      const coap_string_t *query, coap_pdu_t *response)
{
    (void)r;
    (void)request;
    char id[FEDGE_DEVICE_ID_MAX + 1], body[1024];
    int known = requester(g_server, session, query, id);
    if (fedge_agg_round_info(g_server->agg, known ? id : NULL, fedge_now(), body, sizeof body) != FEDGE_OK) {
        set_text(response, COAP_RESPONSE_CODE_INTERNAL_ERROR, "internal error");
        return;
    }
    set_text(response, COAP_RESPONSE_CODE_CONTENT, body);
}

static void hnd_status(coap_resource_t *r, coap_session_t *session, const coap_pdu_t *request,
                       const coap_string_t *query, coap_pdu_t *response)
{
    (void)r;
    (void)session;
    (void)request;
    (void)query;
    char body[1024];
    uint8_t buf[4];
    if (fedge_agg_status_json(g_server->agg, body, sizeof body) != FEDGE_OK) {
        set_text(response, COAP_RESPONSE_CODE_INTERNAL_ERROR, "internal error");
        return;
    }
    coap_pdu_set_code(response, COAP_RESPONSE_CODE_CONTENT);
    coap_add_option(response, COAP_OPTION_CONTENT_FORMAT,
                    coap_encode_var_safe(buf, sizeof buf, COAP_MEDIATYPE_APPLICATION_JSON), buf);
    coap_add_data(response, strlen(body), (const uint8_t *)body);
}

static void hnd_model(coap_resource_t *r, coap_session_t *session, const coap_pdu_t *request,
                      const coap_string_t *query, coap_pdu_t *response)
{
    model_body *b = NULL;
    if (current_body(g_server, &b) != FEDGE_OK) {
        set_text(response, COAP_RESPONSE_CODE_INTERNAL_ERROR, "out of memory");
        return;
    }
    coap_opt_iterator_t it;
    coap_opt_t *etag = coap_check_option(request, COAP_OPTION_ETAG, &it);
    if (etag && coap_opt_length(etag) <= 8 &&
        coap_decode_var_bytes8(coap_opt_value(etag), coap_opt_length(etag)) == b->etag) {
        uint8_t buf[8];
        coap_pdu_set_code(response, COAP_RESPONSE_CODE_VALID);
        coap_add_option(response, COAP_OPTION_ETAG, coap_encode_var_safe8(buf, sizeof buf, b->etag), buf);
        return;
    }
    b->refs++;
    coap_pdu_set_code(response, COAP_RESPONSE_CODE_CONTENT);
    if (!coap_add_data_large_response(r, session, request, response, query,
                                      COAP_MEDIATYPE_APPLICATION_OCTET_STREAM, -1, b->etag, b->len,
                                      b->data, body_release, b)) {
        /* libcoap calls the release function on failure too */
        coap_pdu_set_code(response, COAP_RESPONSE_CODE_INTERNAL_ERROR);
    }
}

static coap_pdu_code_t coap_code(int code)
{
    switch (code) {
    case 204: return COAP_RESPONSE_CODE_CHANGED;
    case 400: return COAP_RESPONSE_CODE_BAD_REQUEST;
    case 401: return COAP_RESPONSE_CODE_UNAUTHORIZED;
    case 403: return COAP_RESPONSE_CODE_FORBIDDEN;
    case 409: return COAP_RESPONSE_CODE_CONFLICT;
    case 413: return COAP_RESPONSE_CODE_REQUEST_TOO_LARGE;
    case 503: return COAP_RESPONSE_CODE_SERVICE_UNAVAILABLE;
    default: return COAP_RESPONSE_CODE_INTERNAL_ERROR;
    }
}

static void hnd_update(coap_resource_t *r, coap_session_t *session, const coap_pdu_t *request,
                       const coap_string_t *query, coap_pdu_t *response)
{
    (void)r;
    char id[FEDGE_DEVICE_ID_MAX + 1], msg[320];
    size_t len = 0, offset = 0, total = 0;
    const uint8_t *data = NULL;
    int code = 500;
    if (!requester(g_server, session, query, id)) {
        set_text(response, COAP_RESPONSE_CODE_UNAUTHORIZED, "unknown device");
        return;
    }
    if (!coap_get_data_large(request, &len, &data, &offset, &total) || len == 0) {
        set_text(response, COAP_RESPONSE_CODE_BAD_REQUEST, "empty body");
        return;
    }
    if (offset != 0 || len != total) {
        /* a lone late block (its transfer already completed or was dropped):
         * the client resends the whole update, which dedup recognises */
        set_text(response, COAP_RESPONSE_CODE(408), "incomplete Block1 body; resend the whole update");
        return;
    }
    int ret = fedge_agg_submit(g_server->agg, id, data, len, fedge_now(), &code, msg, sizeof msg);
    if (ret != FEDGE_OK) {
        FEDGE_ERROR("update from %s: %s", id, fedge_strerror(ret));
        set_text(response, COAP_RESPONSE_CODE_INTERNAL_ERROR, "aggregator error; retry later");
        return;
    }
    if (code == 503) {
        uint8_t buf[4];
        coap_add_option(response, COAP_OPTION_MAXAGE, coap_encode_var_safe(buf, sizeof buf, 1), buf);
    }
    set_text(response, coap_code(code), msg);
}

static const coap_bin_const_t *psk_for_identity(coap_bin_const_t *identity, coap_session_t *session,
                                               void *arg)
{
    (void)session;
    fedge_server *s = arg;
    if (!identity)
        return NULL;
    const fedge_device_entry *e = fedge_keys_find(&s->agg->keys, (const char *)identity->s, identity->length);
    if (!e) {
        FEDGE_INFO("DTLS handshake refused: unknown identity '%.*s'",
                   (int)(identity->length > 64 ? 64 : identity->length), identity->s);
        return NULL;
    }
    return &s->psks[e - s->agg->keys.devices];
}

static int add_resource(coap_context_t *ctx, const char *path, coap_request_t method,
                        coap_method_handler_t h)
{
    coap_resource_t *r = coap_resource_init(coap_make_str_const(path), 0);
    if (!r)
        return FEDGE_ERR_NOMEM;
    coap_register_request_handler(r, method, h);
    coap_add_resource(ctx, r);
    return FEDGE_OK;
}

int fedge_server_start(fedge_aggregator *a, fedge_server **out, char *err, size_t errlen)
{
    fedge_server *s = NULL;
    struct addrinfo hints, *res = NULL;
    char host[128];
    int ret = FEDGE_OK;
    *out = NULL;
    if (g_server) {
        snprintf(err, errlen, "a server is already running in this process");
        return FEDGE_ERR_STATE;
    }
    snprintf(host, sizeof host, "%s", a->cfg.listen);
    char *colon = strrchr(host, ':');
    if (!colon) {
        snprintf(err, errlen, "listen: expected HOST:PORT");
        return FEDGE_ERR_CONFIG_VALUE;
    }
    *colon = '\0';
    const char *port = colon + 1;
    char *h = host;
    if (h[0] == '[' && colon > h && colon[-1] == ']') {
        h++;
        colon[-1] = '\0';
    }

    coap_startup();
    coap_set_log_level(LOG_WARNING);
    coap_dtls_set_log_level(LOG_WARNING);
    s = calloc(1, sizeof *s);
    if (!s)
        FAIL(FEDGE_ERR_NOMEM);
    s->agg = a;
    s->ctx = coap_new_context(NULL);
    if (!s->ctx)
        FAIL(FEDGE_ERR_NOMEM);
    coap_context_set_block_mode(s->ctx, COAP_BLOCK_USE_LIBCOAP | COAP_BLOCK_SINGLE_BODY);
    coap_context_set_max_idle_sessions(s->ctx, (unsigned)(a->keys.n + 16));

    if (!a->cfg.insecure) {
        if (!coap_dtls_is_supported()) {
            snprintf(err, errlen, "this libcoap has no DTLS support");
            FAIL(FEDGE_ERR_UNSUPPORTED);
        }
        s->psks = calloc(a->keys.n, sizeof *s->psks);
        s->psk_text = calloc(a->keys.n, sizeof *s->psk_text);
        if (!s->psks || !s->psk_text)
            FAIL(FEDGE_ERR_NOMEM);
        for (size_t i = 0; i < a->keys.n; i++) {
            CHK(fedge_keys_dtls_psk(a->keys.devices[i].secret, a->keys.devices[i].id, s->psk_text[i]));
            s->psks[i].s = (const uint8_t *)s->psk_text[i];
            s->psks[i].length = FEDGE_PSK_LEN;
        }
        static coap_dtls_spsk_t spsk;
        memset(&spsk, 0, sizeof spsk);
        spsk.version = COAP_DTLS_SPSK_SETUP_VERSION;
        spsk.validate_id_call_back = psk_for_identity;
        spsk.id_call_back_arg = s;
        /* the default key is never used: every identity maps to its own */
        spsk.psk_info.key.s = (const uint8_t *)"fedge-no-default-psk";
        spsk.psk_info.key.length = 20;
        if (!coap_context_set_psk2(s->ctx, &spsk)) {
            snprintf(err, errlen, "cannot set up DTLS-PSK");
            FAIL(FEDGE_ERR_CRYPTO);
        }
    }

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_DGRAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
    int gai = getaddrinfo(h, port, &hints, &res);
    if (gai != 0) {
        snprintf(err, errlen, "listen %s: %s", a->cfg.listen, gai_strerror(gai));
        FAIL(FEDGE_ERR_CONFIG_VALUE);
    }
    coap_address_t addr;
    coap_address_init(&addr);
    addr.size = (socklen_t)res->ai_addrlen;
    memcpy(&addr.addr, res->ai_addr, res->ai_addrlen);
    if (!coap_new_endpoint(s->ctx, &addr, a->cfg.insecure ? COAP_PROTO_UDP : COAP_PROTO_DTLS)) {
        snprintf(err, errlen, "cannot listen on %s (in use?)", a->cfg.listen);
        FAIL(FEDGE_ERR_IO);
    }
    CHK(add_resource(s->ctx, "round", COAP_REQUEST_GET, hnd_round));
    CHK(add_resource(s->ctx, "model", COAP_REQUEST_GET, hnd_model));
    CHK(add_resource(s->ctx, "update", COAP_REQUEST_POST, hnd_update));
    CHK(add_resource(s->ctx, "status", COAP_REQUEST_GET, hnd_status));
    g_server = s;
    FEDGE_INFO("listening on %s (%s), %zu devices", a->cfg.listen,
               a->cfg.insecure ? "plain CoAP, INSECURE" : "CoAP over DTLS-PSK", a->keys.n);
cleanup:
    if (res)
        freeaddrinfo(res);
    if (ret != FEDGE_OK) {
        if (!err[0])
            snprintf(err, errlen, "%s", fedge_strerror(ret));
        fedge_server_free(s);
        s = NULL;
    }
    *out = s;
    return ret;
}

int fedge_server_process(fedge_server *s, unsigned timeout_ms)
{
    if (coap_io_process(s->ctx, timeout_ms) < 0)
        return FEDGE_ERR_IO;
    return FEDGE_OK;
}

void fedge_server_free(fedge_server *s)
{
    if (!s)
        return;
    if (s->ctx)
        coap_free_context(s->ctx); /* releases in-flight model bodies */
    body_unref(s->body);
    if (s->psk_text) {
        memset(s->psk_text, 0, s->agg->keys.n * sizeof *s->psk_text);
        free(s->psk_text);
    }
    free(s->psks);
    if (g_server == s)
        g_server = NULL;
    free(s);
    coap_cleanup();
}

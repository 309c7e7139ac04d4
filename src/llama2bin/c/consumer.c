/*
 * llama2bin's C consumer check.
 *
 * Memory-maps a llama2.c .bin file of version 0, 1 (the seed's Q8_0 v1, or llama2.c master's
 * float32 v1, "1f": group_size 0) or 2 the way llama2.c's run.c (v0) and runq.c (v2) do - weight pointers straight into the mapping, nothing copied - runs one
 * forward pass per position of a token sequence with a KV cache, and prints the logits of
 * every position. It shares no code with llama2bin's Python reader, so agreement between
 * the two proves the file is consumable from C, not merely self-consistent.
 *
 * usage: consumer [--mode f32|q8] FILE.bin TOKEN...
 *   --mode f32  float32 arithmetic; Q8_0 weights are dequantized (q * scale) as they are used
 *   --mode q8   (v1/v2 only) runq.c's arithmetic: activations are quantized to Q8_0 with the
 *               file's group size before every matmul, products are summed as int32 per group
 *               and scaled by both group scales
 *   default: f32 for float32 files (v0, 1f), q8 for Q8_0 ones (v1, v2).
 * stdout: one line per position, vocab_size logits printed with %.9g (exact for float32).
 * Like run.c and runq.c it assumes rope_theta 10000 and norm_eps 1e-5: the files store neither.
 * Exit status 1 with one line on stderr for anything it refuses.
 */

#define _POSIX_C_SOURCE 200809L

#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAGIC 0x616b3432u
#define QHEADER_BYTES 256
#define V0_HEADER_BYTES 28

typedef struct {
    int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
} Params;

/* One weight matrix or vector inside the mapping: float32 values (v0 and all norms), or
 * Q8_0 int8 values plus float32 group scales (v1/v2 matrices). Scales are read with
 * memcpy because a tensor of few groups can leave them unaligned. */
typedef struct {
    const float *f;
    const int8_t *q;
    const unsigned char *scales;
} Weight;

typedef struct {
    Params p;
    int version, shared, group_size, quantized;
    const float *rms_att, *rms_ffn, *rms_final; /* [n_layers * dim], [n_layers * dim], [dim] */
    Weight tok, cls;
    Weight *wq, *wk, *wv, *wo, *w1, *w2, *w3; /* one per layer */
    unsigned char *map;
    size_t size;
} Model;

static const char *g_path = "";

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "consumer: %s: ", g_path);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (!p) die("out of memory");
    return p;
}

static float scale_at(const Weight *w, size_t group) {
    float s;
    memcpy(&s, w->scales + 4 * group, sizeof s);
    return s;
}

/* ---- mapping ------------------------------------------------------------------------- */

/* Walks the mapping front to back; the caller has already checked the file size, so every
 * take stays inside it. */
typedef struct {
    unsigned char *base;
    size_t off;
} Cursor;

static unsigned char *take(Cursor *c, size_t nbytes) {
    unsigned char *p = c->base + c->off;
    c->off += nbytes;
    return p;
}

static const float *take_f32(Cursor *c, size_t count) { return (const float *)(void *)take(c, 4 * count); }

static size_t kv_dim(const Params *p) { return (size_t)p->dim / p->n_heads * p->n_kv_heads; }

/* The size each format implies, computed independently of the mapping code below
 * (gs 0 with the 256-byte header: 1f, every weight float32). */
static size_t expected_size(const Params *p, int version, int shared, int gs) {
    size_t dim = p->dim, hid = p->hidden_dim, L = p->n_layers, V = p->vocab_size, kv = kv_dim(p);
    size_t hs = dim / p->n_heads;
    size_t matrices = L * (2 * dim * dim + 2 * kv * dim + 3 * dim * hid) + V * dim + (shared ? 0 : V * dim);
    size_t norms = L * 2 * dim + dim;
    if (version == 0) return V0_HEADER_BYTES + 4 * (matrices + norms + 2 * (size_t)p->seq_len * (hs / 2));
    if (gs == 0) return QHEADER_BYTES + 4 * (norms + matrices);
    return QHEADER_BYTES + 4 * norms + matrices + 4 * (matrices / gs);
}

/* v0, run.c's memory_map_weights: tok_embeddings, then each kind for all layers
 * (attention_norm, wq, wk, wv, wo, ffn_norm, w1, w2, w3), the final norm, two rope tables
 * run.c skips, and the classifier only when vocab_size was negative. */
static void map_v0(Model *m, Cursor *c) {
    const Params *p = &m->p;
    size_t dim = p->dim, hid = p->hidden_dim, kv = kv_dim(p), hs = dim / p->n_heads;
    m->tok.f = take_f32(c, (size_t)p->vocab_size * dim);
    m->rms_att = take_f32(c, (size_t)p->n_layers * dim);
    Weight **kinds[] = {&m->wq, &m->wk, &m->wv, &m->wo};
    size_t sizes[] = {dim * dim, kv * dim, kv * dim, dim * dim};
    for (int k = 0; k < 4; k++)
        for (int l = 0; l < p->n_layers; l++) (*kinds[k])[l].f = take_f32(c, sizes[k]);
    m->rms_ffn = take_f32(c, (size_t)p->n_layers * dim);
    Weight **ffn[] = {&m->w1, &m->w2, &m->w3};
    for (int k = 0; k < 3; k++)
        for (int l = 0; l < p->n_layers; l++) (*ffn[k])[l].f = take_f32(c, dim * hid);
    m->rms_final = take_f32(c, dim);
    take(c, 2 * 4 * (size_t)p->seq_len * (hs / 2)); /* freqs_cos, freqs_sin: recomputed below */
    m->cls.f = m->shared ? m->tok.f : take_f32(c, (size_t)p->vocab_size * dim);
}

/* The Q8_0 tensors of v1/v2 in file order: tok_embeddings, wq..w3 each for all layers,
 * then the classifier when it is not shared. */
static size_t quantized_list(Model *m, Weight **out, size_t *numel) {
    const Params *p = &m->p;
    size_t dim = p->dim, hid = p->hidden_dim, kv = kv_dim(p), n = 0;
    out[n] = &m->tok, numel[n++] = (size_t)p->vocab_size * dim;
    Weight *kinds[] = {m->wq, m->wk, m->wv, m->wo, m->w1, m->w2, m->w3};
    size_t sizes[] = {dim * dim, kv * dim, kv * dim, dim * dim, hid * dim, dim * hid, hid * dim};
    for (int k = 0; k < 7; k++)
        for (int l = 0; l < p->n_layers; l++) out[n] = &kinds[k][l], numel[n++] = sizes[k];
    if (!m->shared) out[n] = &m->cls, numel[n++] = (size_t)p->vocab_size * dim;
    return n;
}

/* v1, 1f and v2 (runq.c's memory_map_weights for v2): norms first (attention_norm xL, ffn_norm
 * xL, final norm); then 1f stores each matrix as float32, v2 interleaves each tensor's int8
 * values with its scales, v1 writes all values and then all scales. */
static void map_quantized(Model *m, Cursor *c) {
    const Params *p = &m->p;
    size_t dim = p->dim;
    m->rms_att = take_f32(c, (size_t)p->n_layers * dim);
    m->rms_ffn = take_f32(c, (size_t)p->n_layers * dim);
    m->rms_final = take_f32(c, dim);
    size_t count = 2 + 7 * (size_t)p->n_layers;
    Weight **list = xcalloc(count, sizeof *list);
    size_t *numel = xcalloc(count, sizeof *numel);
    size_t n = quantized_list(m, list, numel);
    for (size_t i = 0; i < n && !m->quantized; i++) list[i]->f = take_f32(c, numel[i]);
    for (size_t i = 0; i < n && m->quantized; i++) {
        list[i]->q = (const int8_t *)take(c, numel[i]);
        if (m->version == 2) list[i]->scales = take(c, 4 * (numel[i] / m->group_size));
    }
    if (m->version == 1 && m->quantized)
        for (size_t i = 0; i < n; i++) list[i]->scales = take(c, 4 * (numel[i] / m->group_size));
    if (m->shared) m->cls = m->tok;
    free(list);
    free(numel);
}

static int read_i32(const unsigned char *b) {
    int32_t v;
    memcpy(&v, b, 4);
    return v;
}

static void open_model(Model *m, const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) die("cannot open");
    struct stat st;
    if (fstat(fd, &st) != 0) die("cannot stat");
    m->size = (size_t)st.st_size;
    if (m->size < V0_HEADER_BYTES) die("too short (%zu bytes) for a header", m->size);
    m->map = mmap(NULL, m->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd); /* the mapping keeps the file */
    if (m->map == MAP_FAILED) die("mmap failed");

    const unsigned char *h = m->map;
    uint32_t magic;
    memcpy(&magic, h, 4);
    int fields[7];
    if (magic == MAGIC) {
        if (m->size < QHEADER_BYTES) die("too short (%zu bytes) for a 256-byte header", m->size);
        m->version = read_i32(h + 4);
        if (m->version != 1 && m->version != 2) die("unsupported version %d", m->version);
        for (int i = 0; i < 7; i++) fields[i] = read_i32(h + 8 + 4 * i);
        m->shared = h[36];
        m->group_size = read_i32(h + 37);
        m->quantized = !(m->version == 1 && m->group_size == 0); /* group_size 0: 1f, float32 */
    } else {
        m->version = 0;
        for (int i = 0; i < 7; i++) fields[i] = read_i32(h + 4 * i);
        /* run.c: a negative vocab_size means the classifier is stored after the weights */
        m->shared = fields[5] > 0;
        fields[5] = abs(fields[5]);
    }
    Params *p = &m->p;
    p->dim = fields[0], p->hidden_dim = fields[1], p->n_layers = fields[2], p->n_heads = fields[3];
    p->n_kv_heads = fields[4], p->vocab_size = fields[5], p->seq_len = fields[6];
    for (int i = 0; i < 7; i++)
        if (fields[i] <= 0 || fields[i] > (1 << 22)) die("header field %d is %d", i, fields[i]);
    if (p->dim % p->n_heads || p->n_heads % p->n_kv_heads || (p->dim / p->n_heads) % 2)
        die("inconsistent heads: dim %d, n_heads %d, n_kv_heads %d", p->dim, p->n_heads, p->n_kv_heads);
    if (m->version && (m->shared > 1 || (m->quantized && (m->group_size <= 0 || p->dim % m->group_size))))
        die("bad quantization header: shared %d, group_size %d", m->shared, m->group_size);
    size_t want = expected_size(p, m->version, m->shared, m->group_size);
    if (want != m->size) die("file has %zu bytes, its v%d header implies %zu", m->size, m->version, want);

    m->wq = xcalloc(p->n_layers, sizeof(Weight)), m->wk = xcalloc(p->n_layers, sizeof(Weight));
    m->wv = xcalloc(p->n_layers, sizeof(Weight)), m->wo = xcalloc(p->n_layers, sizeof(Weight));
    m->w1 = xcalloc(p->n_layers, sizeof(Weight)), m->w2 = xcalloc(p->n_layers, sizeof(Weight));
    m->w3 = xcalloc(p->n_layers, sizeof(Weight));
    Cursor c = {m->map, m->version == 0 ? V0_HEADER_BYTES : QHEADER_BYTES};
    if (m->version == 0)
        map_v0(m, &c);
    else
        map_quantized(m, &c);
    if (c.off != m->size) die("internal: mapped %zu of %zu bytes", c.off, m->size);
}

/* ---- arithmetic ---------------------------------------------------------------------- */

typedef struct {
    int8_t *q;
    float *s;
} QVec;

/* runq.c's activation quantization: per group scale = max|x| / 127, q = round(x / scale)
 * (half away from zero). An all-zero group gets scale 0 and q 0 instead of 0/0. */
static void quantize_vec(QVec *out, const float *x, int n, int gs) {
    for (int g = 0; g < n / gs; g++) {
        float wmax = 0.0f;
        for (int i = 0; i < gs; i++) {
            float a = fabsf(x[g * gs + i]);
            if (a > wmax) wmax = a;
        }
        float scale = wmax / 127.0f;
        out->s[g] = scale;
        for (int i = 0; i < gs; i++) out->q[g * gs + i] = scale == 0.0f ? 0 : (int8_t)roundf(x[g * gs + i] / scale);
    }
}

/* out[d] = W[d, n] @ x[n]. For Q8_0 weights in f32 mode each weight is dequantized to
 * q * scale (a float32 product, exactly what the Python reader returns) before the multiply. */
static void matvec_f32(float *out, const Weight *w, const float *x, int n, int d, int gs) {
    for (int i = 0; i < d; i++) {
        float acc = 0.0f;
        size_t row = (size_t)i * n;
        if (w->f) {
            for (int j = 0; j < n; j++) acc += w->f[row + j] * x[j];
        } else {
            for (int j = 0; j < n; j++) {
                float wij = (float)w->q[row + j] * scale_at(w, (row + j) / gs);
                acc += wij * x[j];
            }
        }
        out[i] = acc;
    }
}

/* runq.c's matmul: int32 dot product per group of quantized activations and weights, then
 * val += ival * weight_scale * activation_scale, group after group. */
static void matvec_q8(float *out, const Weight *w, const QVec *x, int n, int d, int gs) {
    for (int i = 0; i < d; i++) {
        size_t row = (size_t)i * n;
        float acc = 0.0f;
        for (int j = 0; j < n; j += gs) {
            int32_t ival = 0;
            for (int k = 0; k < gs; k++) ival += (int32_t)x->q[j + k] * (int32_t)w->q[row + j + k];
            acc += ((float)ival) * scale_at(w, (row + j) / gs) * x->s[j / gs];
        }
        out[i] = acc;
    }
}

static void rmsnorm(float *out, const float *x, const float *weight, int n) {
    float ss = 0.0f;
    for (int j = 0; j < n; j++) ss += x[j] * x[j];
    ss = 1.0f / sqrtf(ss / n + 1e-5f);
    for (int j = 0; j < n; j++) out[j] = weight[j] * (ss * x[j]);
}

static void softmax(float *x, int n) {
    float mx = x[0], sum = 0.0f;
    for (int i = 1; i < n; i++)
        if (x[i] > mx) mx = x[i];
    for (int i = 0; i < n; i++) sum += (x[i] = expf(x[i] - mx));
    for (int i = 0; i < n; i++) x[i] /= sum;
}

typedef struct {
    float *x, *xb, *xb2, *hb, *hb2, *q, *k, *v, *att, *logits, *key_cache, *value_cache;
    QVec xq, hq;
} State;

static void alloc_state(State *s, const Params *p) {
    size_t kv = kv_dim(p), cache = (size_t)p->n_layers * p->seq_len * kv;
    s->x = xcalloc(p->dim, 4), s->xb = xcalloc(p->dim, 4), s->xb2 = xcalloc(p->dim, 4);
    s->hb = xcalloc(p->hidden_dim, 4), s->hb2 = xcalloc(p->hidden_dim, 4);
    s->q = xcalloc(p->dim, 4), s->k = xcalloc(kv, 4), s->v = xcalloc(kv, 4);
    s->att = xcalloc((size_t)p->seq_len, 4), s->logits = xcalloc(p->vocab_size, 4);
    s->key_cache = xcalloc(cache, 4), s->value_cache = xcalloc(cache, 4);
    s->xq.q = xcalloc(p->dim, 1), s->xq.s = xcalloc(p->dim, 4);
    s->hq.q = xcalloc(p->hidden_dim, 1), s->hq.s = xcalloc(p->hidden_dim, 4);
}

/* out = W @ x in the chosen arithmetic; `xq` is x quantized once and shared by the matmuls
 * that read the same activations (as runq.c does). */
static void matmul(const Model *m, int q8, float *out, const Weight *w, const float *x, QVec *xq, int n, int d) {
    if (q8)
        matvec_q8(out, w, xq, n, d, m->group_size);
    else
        matvec_f32(out, w, x, n, d, m->group_size);
}

static void embed(const Model *m, float *x, int token) {
    size_t dim = m->p.dim, first = (size_t)token * dim;
    if (m->tok.f) {
        memcpy(x, m->tok.f + first, dim * sizeof *x);
        return;
    }
    for (size_t j = 0; j < dim; j++) x[j] = (float)m->tok.q[first + j] * scale_at(&m->tok, (first + j) / m->group_size);
}

static void forward(const Model *m, State *s, int q8, int token, int pos) {
    const Params *p = &m->p;
    int dim = p->dim, hid = p->hidden_dim, hs = dim / p->n_heads, kv = (int)kv_dim(p);
    int kv_mul = p->n_heads / p->n_kv_heads, gs = m->group_size;
    embed(m, s->x, token);
    for (int l = 0; l < p->n_layers; l++) {
        rmsnorm(s->xb, s->x, m->rms_att + (size_t)l * dim, dim);
        if (q8) quantize_vec(&s->xq, s->xb, dim, gs);
        matmul(m, q8, s->q, &m->wq[l], s->xb, &s->xq, dim, dim);
        matmul(m, q8, s->k, &m->wk[l], s->xb, &s->xq, dim, kv);
        matmul(m, q8, s->v, &m->wv[l], s->xb, &s->xq, dim, kv);
        /* rotary embedding on adjacent pairs of every head (k has fewer heads with GQA) */
        for (int i = 0; i < dim; i += 2) {
            float freq = 1.0f / powf(10000.0f, (float)(i % hs) / (float)hs);
            float angle = pos * freq, c = cosf(angle), sn = sinf(angle);
            for (int which = 0; which < (i < kv ? 2 : 1); which++) {
                float *vec = which == 0 ? s->q : s->k;
                float a = vec[i], b = vec[i + 1];
                vec[i] = a * c - b * sn;
                vec[i + 1] = a * sn + b * c;
            }
        }
        size_t layer_off = (size_t)l * p->seq_len * kv;
        memcpy(s->key_cache + layer_off + (size_t)pos * kv, s->k, kv * sizeof(float));
        memcpy(s->value_cache + layer_off + (size_t)pos * kv, s->v, kv * sizeof(float));
        for (int h = 0; h < p->n_heads; h++) {
            const float *qh = s->q + h * hs;
            size_t kv_off = (size_t)(h / kv_mul) * hs; /* query head h reads kv head h / kv_mul */
            for (int t = 0; t <= pos; t++) {
                const float *kt = s->key_cache + layer_off + (size_t)t * kv + kv_off;
                float score = 0.0f;
                for (int i = 0; i < hs; i++) score += qh[i] * kt[i];
                s->att[t] = score / sqrtf((float)hs);
            }
            softmax(s->att, pos + 1);
            float *out = s->xb + h * hs;
            memset(out, 0, hs * sizeof(float));
            for (int t = 0; t <= pos; t++) {
                const float *vt = s->value_cache + layer_off + (size_t)t * kv + kv_off;
                for (int i = 0; i < hs; i++) out[i] += s->att[t] * vt[i];
            }
        }
        if (q8) quantize_vec(&s->xq, s->xb, dim, gs);
        matmul(m, q8, s->xb2, &m->wo[l], s->xb, &s->xq, dim, dim);
        for (int i = 0; i < dim; i++) s->x[i] += s->xb2[i];

        rmsnorm(s->xb, s->x, m->rms_ffn + (size_t)l * dim, dim);
        if (q8) quantize_vec(&s->xq, s->xb, dim, gs);
        matmul(m, q8, s->hb, &m->w1[l], s->xb, &s->xq, dim, hid);
        matmul(m, q8, s->hb2, &m->w3[l], s->xb, &s->xq, dim, hid);
        for (int i = 0; i < hid; i++) s->hb[i] = s->hb[i] * (1.0f / (1.0f + expf(-s->hb[i]))) * s->hb2[i];
        if (q8) quantize_vec(&s->hq, s->hb, hid, gs);
        matmul(m, q8, s->xb, &m->w2[l], s->hb, &s->hq, hid, dim);
        for (int i = 0; i < dim; i++) s->x[i] += s->xb[i];
    }
    rmsnorm(s->x, s->x, m->rms_final, dim);
    if (q8) quantize_vec(&s->xq, s->x, dim, gs);
    matmul(m, q8, s->logits, &m->cls, s->x, &s->xq, dim, p->vocab_size);
}

int main(int argc, char **argv) {
    int arg = 1, mode = -1; /* -1: the format's default; 0: f32; 1: q8 */
    if (arg + 1 < argc && strcmp(argv[arg], "--mode") == 0) {
        if (strcmp(argv[arg + 1], "f32") == 0)
            mode = 0;
        else if (strcmp(argv[arg + 1], "q8") == 0)
            mode = 1;
        else {
            fprintf(stderr, "consumer: --mode is f32 or q8, not %s\n", argv[arg + 1]);
            return 2;
        }
        arg += 2;
    }
    if (argc - arg < 2) {
        fprintf(stderr, "usage: consumer [--mode f32|q8] FILE.bin TOKEN...\n");
        return 2;
    }
    g_path = argv[arg];
    Model m = {0};
    open_model(&m, argv[arg++]);
    if (mode < 0) mode = m.quantized;
    if (mode == 1 && !m.quantized) die("--mode q8 needs a Q8_0 file (v1 or v2), this is float32 (v0 or 1f)");
    if (mode == 1 && m.p.hidden_dim % m.group_size)
        die("hidden_dim %d is not a multiple of group_size %d: runq.c's grouped matmul cannot run it", m.p.hidden_dim,
            m.group_size);
    int n_tokens = argc - arg;
    if (n_tokens > m.p.seq_len) die("%d tokens exceed max_seq_len %d", n_tokens, m.p.seq_len);
    State s;
    alloc_state(&s, &m.p);
    for (int pos = 0; pos < n_tokens; pos++) {
        char *end;
        long token = strtol(argv[arg + pos], &end, 10);
        if (*end || end == argv[arg + pos] || token < 0 || token >= m.p.vocab_size)
            die("token %s is not an id below vocab_size %d", argv[arg + pos], m.p.vocab_size);
        forward(&m, &s, mode, (int)token, pos);
        for (int i = 0; i < m.p.vocab_size; i++) printf(i ? " %.9g" : "%.9g", s.logits[i]);
        putchar('\n');
    }
    fprintf(stderr, "consumer: %s: v%d, dim %d, %d layers, %d/%d heads, vocab %d, %s classifier, %s arithmetic\n", g_path,
            m.version, m.p.dim, m.p.n_layers, m.p.n_heads, m.p.n_kv_heads, m.p.vocab_size, m.shared ? "shared" : "separate",
            mode ? "q8 (runq.c)" : "f32");
    if (fflush(stdout) != 0) die("cannot write the logits");
    return 0;
}

/*
 * The file half of llama2bin's C consumer (consumer.c includes it; one compilation unit):
 * header parsing and the memory mapping of v0, v1, 1f and v2 into weight pointers, as run.c and
 * runq.c do. Split from consumer.c only to keep each file readable; it is not a library.
 */

#ifndef LLAMA2BIN_CONSUMER_MAP_H
#define LLAMA2BIN_CONSUMER_MAP_H

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
    const float *freqs_cos, *freqs_sin;        /* v0's rope tables [seq_len * head_size / 2] */
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
    /* freqs_cos, freqs_sin: run.c skips them; --rope tables reads them as the table ports do */
    m->freqs_cos = take_f32(c, (size_t)p->seq_len * (hs / 2));
    m->freqs_sin = take_f32(c, (size_t)p->seq_len * (hs / 2));
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

#endif

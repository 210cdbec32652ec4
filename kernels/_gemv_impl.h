/* z = x W for a few rows of x, with W's rows streamed once per tile of rows: the
   body of kernels/_gemv.h, included there once per (dtype, instruction set) with

     FM_T        float or double
     FM_V        a GNU vector of FM_W FM_T (vector_size(FM_W * sizeof(FM_T)))
     FM_W        lanes of FM_V
     FM_NV       vectors of accumulators a one-row tile keeps (a power of two; 4 rows
                 keep FM_NV / 4 each): as many as the registers hold with room to spare
     FM_ATTR     the function attribute naming the instruction set, or nothing
     FM_FN(name) the name with this copy's suffix

   It #undefs the four per-dtype ones (FM_T, FM_V, FM_W, FM_FN) at its end, so the
   next copy defines its own; FM_NV and FM_ATTR, shared by an instruction set's two
   dtypes, are left to the includer.

   Layout: x (rows, n_in), W (n_in, n_out) and z (rows, n_out), all row-major, as
   theta and the predict buffers hold them (x's rows may be ldx > n_in apart: a part
   of the sum over n_in, see xw). z[r, :] = sum_i x[r, i] W[i, :], a tile of z (up to
   4 rows by up to FM_NV vectors of columns) kept in registers for the whole sum: W is
   read once per tile of rows (contiguously for a 1-row tile as wide as the layer),
   which is nearly all the memory traffic there is. */

/* z[r, j0:j0 + NV*FM_W] (+)= x[r, :n_in] W[:n_in, j0:...] for r < R, x's rows ldx
   apart; x, z already offset to the tile's first row, W and z to its first column;
   add: z += the sum, else z = the sum. R and NV are constants at every call (always
   inlined), so the loops over them unroll and acc lives in registers. */
FM_ATTR static inline __attribute__((always_inline)) void
FM_FN(tile)(const int R, const int NV, Py_ssize_t ldx, Py_ssize_t n_in, Py_ssize_t n_out,
            int add, const FM_T* x, const FM_T* W, FM_T* z)
{
    FM_V acc[4][FM_NV];
    FM_V w;
    Py_ssize_t i;
    int r, k;
    for (r = 0; r < R; r++)
        for (k = 0; k < NV; k++)
            acc[r][k] = (FM_V){0};
    for (i = 0; i < n_in; i++) {
        const FM_T* wi = W + i * n_out;
        for (k = 0; k < NV; k++) {
            memcpy(&w, wi + k * FM_W, sizeof w);   /* an unaligned vector load */
            for (r = 0; r < R; r++)
                acc[r][k] += x[r * ldx + i] * w;
        }
    }
    for (r = 0; r < R; r++)
        for (k = 0; k < NV; k++) {
            if (add) {
                memcpy(&w, z + r * n_out + k * FM_W, sizeof w);
                acc[r][k] += w;
            }
            memcpy(z + r * n_out + k * FM_W, &acc[r][k], sizeof w);
        }
}

/* The last cols (< FM_W) columns of one row: z[0:cols] (+)= x[:n_in] W[:n_in, 0:cols],
   W offset to the first of them. Each vector load reads FM_W columns, those past the
   row's end belonging to the next W row (their lanes are computed and dropped); the
   last row is read from a zero-padded copy, so nothing past W is read. Four partial
   sums over i: one would be a chain of dependent adds. */
FM_ATTR static void
FM_FN(tail)(Py_ssize_t n_in, Py_ssize_t n_out, Py_ssize_t cols, int add, const FM_T* x,
            const FM_T* W, FM_T* z)
{
    FM_V a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, w;
    FM_T last[FM_W] = {0};
    Py_ssize_t i, n4 = (n_in - 1) - (n_in - 1) % 4;
    for (i = 0; i < n4; i += 4) {
        memcpy(&w, W + i * n_out, sizeof w);
        a0 += x[i] * w;
        memcpy(&w, W + (i + 1) * n_out, sizeof w);
        a1 += x[i + 1] * w;
        memcpy(&w, W + (i + 2) * n_out, sizeof w);
        a2 += x[i + 2] * w;
        memcpy(&w, W + (i + 3) * n_out, sizeof w);
        a3 += x[i + 3] * w;
    }
    for (; i < n_in - 1; i++) {
        memcpy(&w, W + i * n_out, sizeof w);
        a0 += x[i] * w;
    }
    memcpy(last, W + (n_in - 1) * n_out, cols * sizeof(FM_T));
    memcpy(&w, last, sizeof w);
    a1 += x[n_in - 1] * w;
    a0 = (a0 + a1) + (a2 + a3);
    memcpy(last, &a0, sizeof w);
    for (i = 0; i < cols; i++)
        z[i] = add ? z[i] + last[i] : last[i];
}

/* R rows (1, 2 or 4) of z, every column: tiles of NV = FM_NV / R vectors, then the
   leftover vectors in tiles of NV / 2, NV / 4, ... (one each at most), then the
   leftover columns (< FM_W) one row at a time. (Measured on 784x256 float32: one
   row 4.9 us, 2 rows 7.1, 4 rows 7.2, with W in L2; neither splitting n_in into
   chunks, so that W is read whole chunk by chunk rather than in strips of columns,
   nor software prefetches of the strips helped.) */
#define FM_TILE(R, NV)                                                                  \
    FM_FN(tile)((R), (NV), ldx, n_in, n_out, add, x, W + j, z + j);                     \
    j += (NV) * FM_W
#define FM_ROWS(R)                                                                      \
    do {                                                                                \
        const int nv = FM_NV / (R);                                                     \
        Py_ssize_t j = 0;                                                               \
        int r;                                                                          \
        while (j + nv * FM_W <= n_out) {                                                \
            FM_TILE((R), FM_NV / (R));                                                  \
        }                                                                               \
        if (nv >= 16 && j + 8 * FM_W <= n_out) { FM_TILE((R), 8); }                     \
        if (nv >= 8 && j + 4 * FM_W <= n_out) { FM_TILE((R), 4); }                      \
        if (nv >= 4 && j + 2 * FM_W <= n_out) { FM_TILE((R), 2); }                      \
        if (nv >= 2 && j + FM_W <= n_out) { FM_TILE((R), 1); }                          \
        for (r = 0; r < (R) && j < n_out; r++)                                          \
            FM_FN(tail)(n_in, n_out, n_out - j, add, x + r * ldx, W + j,                \
                        z + r * n_out + j);                                             \
    } while (0)

/* z (rows, n_out) OVERWRITTEN (add = 0) or INCREMENTED (add = 1) by x (rows, n_in),
   its rows ldx >= n_in apart, times W (n_in, n_out); rows, n_in >= 1. So a sum over
   n_in may be cut in two: xw(.., n_in = k, add = 0) then, on x + k and W + k n_out,
   xw(.., n_in - k, add = 1), or the second part into a buffer b and z += b: the same
   bits either way (_gemv_pool.h). */
FM_ATTR static void
FM_FN(xw)(Py_ssize_t rows, Py_ssize_t ldx, Py_ssize_t n_in, Py_ssize_t n_out, int add,
          const FM_T* x, const FM_T* W, FM_T* z)
{
    for (; rows >= 4; rows -= 4, x += 4 * ldx, z += 4 * n_out)
        FM_ROWS(4);
    if (rows >= 2) {
        FM_ROWS(2);
        rows -= 2, x += 2 * ldx, z += 2 * n_out;
    }
    if (rows == 1)
        FM_ROWS(1);
}

#undef FM_TILE
#undef FM_ROWS
#undef FM_T
#undef FM_V
#undef FM_W
#undef FM_FN

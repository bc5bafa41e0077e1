// N x N MAC array, two modes (the gemm `dw` bit):
//   dense     (dw = 0): one activation vector (act row 0, N bytes) times one weight tile
//             (N x N signed bytes, row j = output channel j) -> N dot products `dot[j]`.
//   depthwise (dw = 1): N activation rows (N output pixels) times one weight row `dw_row`
//             of the tile (one tap's N per-channel weights) broadcast down the array rows ->
//             N x N independent products `prod[p][c]` (pixel p, channel c); no reduction.
// Both modes use all N*N multipliers: a depthwise kernel no longer wastes the off-diagonal
// ones (the reason the dense-only array ran depthwise convs at <= 1/N utilization).
// Activations are int8 or uint8 (INT4/UINT4 values arrive sign/zero-extended
// in a byte, so the same array serves W4A4, W4A8 and W8A8); the activation
// zero point is subtracted before the multiply, as in the ISA definition.
`default_nettype none
module accel_mac_array #(
    parameter integer N = 8,
    parameter integer ROW_BITS = 5   // width of dw_row (the ISA field)
) (
    input  wire [8*N*N-1:0]   act,        // N activation rows (pixels); dense mode uses row 0
    input  wire               act_signed,
    input  wire signed [8:0]  za,
    input  wire [8*N*N-1:0]   wgt,
    input  wire               dw,
    input  wire [ROW_BITS-1:0] dw_row,
    output wire [32*N-1:0]    dot,        // dense: per output channel
    output wire [19*N*N-1:0]  prod        // depthwise: per (pixel, channel), signed 19-bit
);
    // The tap row broadcast in depthwise mode (rows past N read as zero; the dispatcher refuses them).
    reg [8*N-1:0] tap_row;
    integer r;
    always @(*) begin
        tap_row = {(8*N){1'b0}};
        for (r = 0; r < N; r = r + 1)
            if ({{(32-ROW_BITS){1'b0}}, dw_row} == r) tap_row = wgt[8*N*r +: 8*N];
    end
    genvar j, k;
    generate
        for (j = 0; j < N; j = j + 1) begin : g_row
            wire signed [31:0] partial [0:N];
            assign partial[0] = 32'sd0;
            for (k = 0; k < N; k = k + 1) begin : g_mac
                // multiplier (j, k): dense = out channel j x in channel k; depthwise = pixel j x channel k
                wire [7:0] a = dw ? act[8*(j*N+k) +: 8] : act[8*k +: 8];
                wire signed [10:0] centered = $signed({act_signed & a[7], act_signed & a[7], act_signed & a[7], a})
                                            - $signed({za[8], za[8], za});
                wire signed [7:0] w = dw ? tap_row[8*k +: 8] : wgt[8*(j*N+k) +: 8];
                wire signed [18:0] p = centered * w;
                assign prod[19*(j*N+k) +: 19] = p;
                assign partial[k+1] = partial[k] + {{13{p[18]}}, p};
            end
            assign dot[32*j +: 32] = partial[N];
        end
    endgenerate
endmodule
`default_nettype wire

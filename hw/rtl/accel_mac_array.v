// N x N MAC array: one activation vector (N bytes) times one weight tile
// (N x N signed bytes, row j = output channel j) per cycle -> N dot products.
// Activations are int8 or uint8 (INT4/UINT4 values arrive sign/zero-extended
// in a byte, so the same array serves W4A4, W4A8 and W8A8); the activation
// zero point is subtracted before the multiply, as in the ISA definition.
`default_nettype none
module accel_mac_array #(
    parameter integer N = 8
) (
    input  wire [8*N-1:0]     act,
    input  wire               act_signed,
    input  wire signed [8:0]  za,
    input  wire [8*N*N-1:0]   wgt,
    output wire [32*N-1:0]    dot
);
    wire signed [10:0] centered [0:N-1];
    genvar j, k;
    generate
        for (k = 0; k < N; k = k + 1) begin : g_center
            wire [7:0] a = act[8*k +: 8];
            assign centered[k] = $signed({act_signed & a[7], act_signed & a[7], act_signed & a[7], a})
                               - $signed({za[8], za[8], za});
        end
        for (j = 0; j < N; j = j + 1) begin : g_out
            wire signed [31:0] partial [0:N];
            assign partial[0] = 32'sd0;
            for (k = 0; k < N; k = k + 1) begin : g_mac
                wire signed [7:0] w = wgt[8*(j*N+k) +: 8];
                wire signed [18:0] prod = centered[k] * w;
                assign partial[k+1] = partial[k] + {{13{prod[18]}}, prod};
            end
            assign dot[32*j +: 32] = partial[N];
        end
    endgenerate
endmodule
`default_nettype wire

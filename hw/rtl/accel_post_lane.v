// One lane of the fused post-processing unit, bit-exact with
// edgekit.quant.formats.requantize:
//   t = acc + (res - res_zp) * res_mult            (int32 wrap; residual optional)
//   y = clip(rshift_half_even((t + bias) * M, s) + zp, max(qmin, lo), min(qmax, hi))
`default_nettype none
`include "accel_isa.vh"

module accel_post_lane (
    input  wire signed [31:0] acc,
    input  wire               res_en,
    input  wire [7:0]         res_byte,
    input  wire               res_signed,
    input  wire signed [8:0]  res_zp,
    input  wire signed [15:0] res_mult,
    /* verilator lint_off UNUSEDSIGNAL */
    input  wire [`PARAM_ENTRY_BITS-1:0] param,  // one parameter-row entry: `PARAM_BIAS / _MULT / _SHIFT
    /* verilator lint_on UNUSEDSIGNAL */
    input  wire signed [8:0]  zp,
    input  wire signed [8:0]  lo,
    input  wire signed [8:0]  hi,
    input  wire [1:0]         out_type,
    output wire [7:0]         y
);
    wire signed [31:0] bias  = `PARAM_BIAS(param);
    wire signed [15:0] mult  = `PARAM_MULT(param);
    wire [5:0]         shift = `PARAM_SHIFT(param);

    wire signed [10:0] res_c = $signed({res_signed & res_byte[7], res_signed & res_byte[7], res_signed & res_byte[7], res_byte})
                             - $signed({res_zp[8], res_zp[8], res_zp});
    wire signed [26:0] res_term = res_c * res_mult;
    wire signed [31:0] t = acc + (res_en ? {{5{res_term[26]}}, res_term} : 32'sd0);
    wire signed [31:0] total = t + bias;
    wire signed [63:0] prod = {{32{total[31]}}, total} * {{48{mult[15]}}, mult};

    // Round half to even: q = prod >> s, remainder compared with half an LSB.
    wire signed [63:0] q = prod >>> shift;
    wire [63:0] rem = prod - (q <<< shift);
    wire [63:0] half = (shift == 6'd0) ? 64'd0 : (64'd1 << (shift - 6'd1));
    wire round_up = (shift != 6'd0) && ((rem > half) || ((rem == half) && q[0]));
    wire signed [63:0] rounded = q + {63'd0, round_up};
    wire signed [63:0] v = rounded + {{55{zp[8]}}, zp};

    reg signed [8:0] qmin, qmax;
    always @(*) begin
        case (out_type)
            2'd0: begin qmin = -9'sd128; qmax = 9'sd127; end
            2'd1: begin qmin = 9'sd0;    qmax = 9'sd255; end
            2'd2: begin qmin = -9'sd8;   qmax = 9'sd7;   end
            default: begin qmin = 9'sd0; qmax = 9'sd15;  end
        endcase
    end
    wire signed [8:0] clo = (lo > qmin) ? lo : qmin;
    wire signed [8:0] chi = (hi < qmax) ? hi : qmax;
    wire signed [63:0] clo64 = {{55{clo[8]}}, clo};
    wire signed [63:0] chi64 = {{55{chi[8]}}, chi};
    // numpy.clip order: lower bound first, then upper (lo > hi gives hi).
    wire signed [63:0] v1 = (v < clo64) ? clo64 : v;
    /* verilator lint_off UNUSEDSIGNAL */
    wire signed [63:0] v2 = (v1 > chi64) ? chi64 : v1;   // within [-256, 255]: the low byte is the result
    /* verilator lint_on UNUSEDSIGNAL */
    assign y = v2[7:0];
endmodule
`default_nettype wire

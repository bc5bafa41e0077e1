// Compute unit: executes gemm, vec and post, one loop step per cycle.
//   gemm: acc[a] (+)= W[w] . (act[x] - za)            (MAC array, N*N MACs/cycle)
//         dw=1: N pixels per cycle, acc[a+p][c] (+)= W[w][dw_row][c] * (act[x+p*act_si][c] - za)
//   vec : acc[a] = op(acc[a], (act[x] - za) * mult)    (N lanes)
//   post: act[out+r] = requant(acc[acc+r] (+ residual))  (POST_ROWS x N post-processing lanes:
//         POST_ROWS rows per cycle, one when a row's residual is an earlier row's output)
// Addresses walk two nested loops: a = base + o*so + i*si, kept as running
// sums so no multiplier sits in the loop.
`include "accel_isa.vh"
`default_nettype none
module accel_compute #(
    parameter integer N = 8,
    parameter integer ACT_AW = 12,
    parameter integer WGT_AW = 8,
    parameter integer ACC_AW = 11,
    parameter integer PARAM_AW = 8,
    parameter integer POST_ROWS = 2
) (
    input  wire                   clk,
    input  wire                   rst,        // hard or soft reset, or abort
    input  wire                   issue,
    input  wire [127:0]           insn,
    output reg                    busy,
    output wire                   mac_step,   // a gemm step happens this cycle
    output wire [ACT_AW-1:0]      act_ra,
    output wire [15:0]            act_rs,     // row stride of the N act read lanes (depthwise pixels)
    input  wire [8*N*N-1:0]       act_rd,     // N lanes; lane 0 = row act_ra
    output wire [ACT_AW-1:0]      res_ra,
    input  wire [8*N*POST_ROWS-1:0] res_rd,   // POST_ROWS consecutive rows from res_ra
    output wire [WGT_AW-1:0]      wgt_ra,
    input  wire [8*N*N-1:0]       wgt_rd,
    output wire [ACC_AW-1:0]      acc_ra,
    input  wire [32*N*N-1:0]      acc_rd,     // N consecutive rows from acc_ra
    output wire [PARAM_AW-1:0]    par_ra,
    input  wire [64*N-1:0]        par_rd,
    output wire [N-1:0]           acc_we,     // per lane: rows acc_wa + p
    output wire [ACC_AW-1:0]      acc_wa,
    output wire [32*N*N-1:0]      acc_wd,
    output wire [POST_ROWS-1:0]   act_we,     // per post row: rows act_wa + q
    output wire [ACT_AW-1:0]      act_wa,
    output wire [8*N*POST_ROWS-1:0] act_wd
);
    // The latched instruction word: each opcode uses only its own fields.
    /* verilator lint_off UNUSEDSIGNAL */
    reg [127:0] ins;
    /* verilator lint_on UNUSEDSIGNAL */
    reg [3:0]   op;
    reg [11:0]  o, i;
    reg [11:0]  outer, inner;     // post: outer = count, inner = 1
    reg [15:0]  acc_row, acc_a, act_row, act_a, wgt_row, wgt_a, out_a;

    wire is_gemm = (op == `OP_GEMM);
    wire is_vec  = (op == `OP_VEC);
    wire is_post = (op == `OP_POST);
    wire dw      = is_gemm && `GEMM_DW(ins);
    wire empty   = (outer == 12'd0) || (inner == 12'd0);
    wire step    = busy && !empty;
    // Depthwise mode walks the inner loop N pixels per cycle; the last group of a row may be partial.
    wire [31:0] i_step = dw ? N : 32'd1;
    wire [31:0] i_next = {20'd0, i} + i_step;
    wire row_end = i_next >= {20'd0, inner};
    // post walks the outer loop POST_ROWS rows per cycle unless a row's residual is the output of
    // an earlier row of the same group (0 < out - res < POST_ROWS): then one row per cycle.
    wire [15:0] res_ahead = `ZX(16, `POST_OUT_W, `POST_OUT(ins)) - `ZX(16, `POST_RES_W, `POST_RES(ins));
    wire post_chained = `POST_RES_EN(ins) && `POST_OUT(ins) > `POST_RES(ins) && {16'd0, res_ahead} < POST_ROWS;
    wire [31:0] o_step = (is_post && !post_chained) ? POST_ROWS : 32'd1;
    wire [31:0] o_next = {20'd0, o} + o_step;
    wire last    = (is_post ? o_next >= {20'd0, outer} : o == outer - 12'd1) && row_end;
    assign mac_step = step && is_gemm;

    // Strides of the running instruction (post rows are one apart; o_step of them per cycle).
    wire [15:0] acc_so = is_gemm ? `ZX(16, `GEMM_ACC_SO_W, `GEMM_ACC_SO(ins)) : is_vec ? `ZX(16, `VEC_ACC_SO_W, `VEC_ACC_SO(ins)) : 16'd1;
    wire [15:0] acc_si = is_gemm ? `ZX(16, `GEMM_ACC_SI_W, `GEMM_ACC_SI(ins)) : is_vec ? `ZX(16, `VEC_ACC_SI_W, `VEC_ACC_SI(ins)) : 16'd0;
    wire [15:0] act_so = is_gemm ? `ZX(16, `GEMM_ACT_SO_W, `GEMM_ACT_SO(ins)) : is_vec ? `ZX(16, `VEC_ACT_SO_W, `VEC_ACT_SO(ins)) : 16'd1;
    wire [15:0] act_si = is_gemm ? `ZX(16, `GEMM_ACT_SI_W, `GEMM_ACT_SI(ins)) : is_vec ? `ZX(16, `VEC_ACT_SI_W, `VEC_ACT_SI(ins)) : 16'd0;
    wire [15:0] wgt_so = is_gemm ? `ZX(16, `GEMM_WGT_SO_W, `GEMM_WGT_SO(ins)) : 16'd0;
    wire [15:0] wgt_si = is_gemm ? `ZX(16, `GEMM_WGT_SI_W, `GEMM_WGT_SI(ins)) : 16'd0;

    // Decode of the incoming instruction (loop bounds and base addresses).
    wire [3:0] in_op = `OPCODE(insn);
    reg [11:0] in_outer, in_inner;
    reg [15:0] in_acc, in_act, in_wgt, in_out;
    always @(*) begin
        in_outer = 12'd0; in_inner = 12'd0;
        in_acc = 16'd0; in_act = 16'd0; in_wgt = 16'd0; in_out = 16'd0;
        case (in_op)
            `OP_GEMM: begin
                in_outer = `ZX(12, `GEMM_OUTER_W, `GEMM_OUTER(insn)); in_inner = `ZX(12, `GEMM_INNER_W, `GEMM_INNER(insn));
                in_acc = `ZX(16, `GEMM_ACC_W, `GEMM_ACC(insn)); in_act = `ZX(16, `GEMM_ACT_W, `GEMM_ACT(insn)); in_wgt = `ZX(16, `GEMM_WGT_W, `GEMM_WGT(insn));
            end
            `OP_VEC: begin
                in_outer = `ZX(12, `VEC_OUTER_W, `VEC_OUTER(insn)); in_inner = `ZX(12, `VEC_INNER_W, `VEC_INNER(insn));
                in_acc = `ZX(16, `VEC_ACC_W, `VEC_ACC(insn)); in_act = `ZX(16, `VEC_ACT_W, `VEC_ACT(insn));
            end
            `OP_POST: begin
                in_outer = `POST_COUNT(insn); in_inner = 12'd1;
                in_acc = `ZX(16, `POST_ACC_W, `POST_ACC(insn)); in_act = `ZX(16, `POST_RES_W, `POST_RES(insn)); in_out = `ZX(16, `POST_OUT_W, `POST_OUT(insn));
            end
            default: ;
        endcase
    end

    always @(posedge clk) begin
        if (rst) begin
            busy <= 1'b0;
            op <= 4'd0;
        end else if (issue) begin
            busy <= 1'b1;
            ins <= insn; op <= in_op;
            outer <= in_outer; inner <= in_inner; o <= 12'd0; i <= 12'd0;
            acc_row <= in_acc; acc_a <= in_acc;
            act_row <= in_act; act_a <= in_act;
            wgt_row <= in_wgt; wgt_a <= in_wgt;
            out_a <= in_out;
        end else if (busy) begin
            if (empty || last) begin
                busy <= 1'b0;
            end else if (row_end) begin
                i <= 12'd0; o <= o_next[11:0];
                acc_row <= acc_row + acc_so * o_step[15:0]; acc_a <= acc_row + acc_so * o_step[15:0];
                act_row <= act_row + act_so * o_step[15:0]; act_a <= act_row + act_so * o_step[15:0];
                wgt_row <= wgt_row + wgt_so * o_step[15:0]; wgt_a <= wgt_row + wgt_so * o_step[15:0];
                out_a <= out_a + o_step[15:0];
            end else begin
                i <= i_next[11:0];
                acc_a <= acc_a + acc_si * i_step[15:0]; act_a <= act_a + act_si * i_step[15:0];
                wgt_a <= wgt_a + wgt_si * i_step[15:0];
            end
        end
    end

    assign act_ra = act_a[ACT_AW-1:0];
    assign act_rs = act_si;
    assign res_ra = act_a[ACT_AW-1:0];
    assign wgt_ra = wgt_a[WGT_AW-1:0];
    assign acc_ra = acc_a[ACC_AW-1:0];
    assign par_ra = `POST_PARAM(ins);

    // gemm datapath
    wire [32*N-1:0] dot;
    wire [19*N*N-1:0] prod;
    accel_mac_array #(.N(N)) u_mac (
        .act(act_rd), .act_signed(`GEMM_ACT_SIGNED(ins)), .za($signed(`GEMM_ZA(ins))),
        .wgt(wgt_rd), .dw(dw), .dw_row(`GEMM_DW_ROW(ins)), .dot(dot), .prod(prod));

    // Depthwise: pixel lane p (p > 0) writes acc row acc_a + p while the pixel exists.
    genvar p, c;
    generate
        for (p = 1; p < N; p = p + 1) begin : g_pixel
            assign acc_we[p] = step && dw && ({20'd0, i} + p < {20'd0, inner});
            for (c = 0; c < N; c = c + 1) begin : g_chan
                wire signed [31:0] old = acc_rd[32*(p*N+c) +: 32];
                wire signed [31:0] term = {{13{prod[19*(p*N+c)+18]}}, prod[19*(p*N+c) +: 19]};
                assign acc_wd[32*(p*N+c) +: 32] = `GEMM_RESET(ins) ? term : old + term;
            end
        end
    endgenerate

    // vec + gemm accumulator update, lane 0 (the only lane of dense gemm, vec and post)
    wire [32*N-1:0] acc_next;
    wire [8*N*POST_ROWS-1:0] post_y;
    wire signed [8:0]  vza = `VEC_ZA(ins);
    wire signed [15:0] vmult = `VEC_MULT(ins);
    genvar l, q;
    generate
        for (l = 0; l < N; l = l + 1) begin : g_lane
            wire signed [31:0] acc_old = acc_rd[32*l +: 32];
            wire [7:0] a = act_rd[8*l +: 8];
            wire signed [31:0] dw_term = {{13{prod[19*l+18]}}, prod[19*l +: 19]};
            wire signed [31:0] g_term = dw ? dw_term : $signed(dot[32*l +: 32]);
            wire sgn = `VEC_ACT_SIGNED(ins) & a[7];
            wire signed [10:0] centered = $signed({sgn, sgn, sgn, a}) - $signed({vza[8], vza[8], vza});
            wire signed [26:0] term27 = centered * vmult;
            wire signed [31:0] term = {{5{term27[26]}}, term27};
            reg  signed [31:0] vec_out;
            always @(*) begin
                case (`VEC_OP(ins))
                    `VOP_SET: vec_out = term;
                    `VOP_ADD: vec_out = acc_old + term;
                    `VOP_MAX: vec_out = (term > acc_old) ? term : acc_old;
                    default:  vec_out = (term < acc_old) ? term : acc_old;
                endcase
            end
            wire signed [31:0] gemm_out = `GEMM_RESET(ins) ? g_term : acc_old + g_term;
            assign acc_next[32*l +: 32] = is_gemm ? gemm_out : vec_out;

        end
        // post: row q of the group, channel l (acc row acc_a + q, residual row res_ra + q)
        for (q = 0; q < POST_ROWS; q = q + 1) begin : g_post_row
            for (l = 0; l < N; l = l + 1) begin : g_post_lane
                accel_post_lane u_post (
                    .acc($signed(acc_rd[32*(q*N+l) +: 32])), .res_en(`POST_RES_EN(ins)),
                    .res_byte(res_rd[8*(q*N+l) +: 8]),
                    .res_signed(`POST_RES_SIGNED(ins)), .res_zp($signed(`POST_RES_ZP(ins))),
                    .res_mult($signed(`POST_RES_MULT(ins))), .param(par_rd[64*l +: 64]),
                    .zp($signed(`POST_ZP(ins))), .lo($signed(`POST_LO(ins))), .hi($signed(`POST_HI(ins))),
                    .out_type(`POST_OUT_TYPE(ins)), .y(post_y[8*(q*N+l) +: 8]));
            end
            if (q == 0) begin : g_first
                assign act_we[q] = step && is_post;
            end else begin : g_more
                assign act_we[q] = step && is_post && !post_chained && ({20'd0, o} + q < {20'd0, outer});
            end
        end
    endgenerate

    assign acc_we[0] = step && (is_gemm || is_vec);
    assign acc_wa = acc_a[ACC_AW-1:0];
    assign acc_wd[32*N-1:0] = acc_next;
    assign act_wa = out_a[ACT_AW-1:0];
    assign act_wd = post_y;
endmodule
`default_nettype wire

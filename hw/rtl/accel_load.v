// Load unit: DRAM -> buffer with 2-D geometry and padding.
// Walks (pad_top + ysize + pad_bottom) lines of (pad_left + xsize + pad_right)
// rows; padding words (pad_value in every byte) are written one per cycle,
// data lines are read in bursts of at most MAX_BURST beats that never cross
// a 4 KiB boundary. A bus error ends the instruction after its burst's last
// beat (so the read channel stays in step) and is reported with `err`.
// Packed int4 (int4=1): each 64-bit beat carries 16 nibbles that expand to
// two buffer words (sign- or zero-extended bytes); the high half is written
// the cycle after the beat, while `hold` keeps RREADY low.
`include "accel_isa.vh"
`default_nettype none
module accel_load #(
    parameter integer N = 8,
    parameter integer MAX_BURST = 16
) (
    input  wire         clk,
    input  wire         rst,
    input  wire         issue,
    /* verilator lint_off UNUSEDSIGNAL */
    input  wire [127:0] insn,           // only this opcode's fields are read
    /* verilator lint_on UNUSEDSIGNAL */
    output wire         busy,
    output reg          err,          // pulse: the instruction ended with a bus error
    output reg          hold,         // the high half of a packed int4 beat is still to be written
    output wire         rd_req,
    output wire [31:0]  rd_addr,
    output wire [7:0]   rd_len,
    input  wire         rd_grant,
    input  wire         rd_valid,
    input  wire [63:0]  rd_data,
    input  wire         rd_err,
    input  wire         rd_last,
    output wire         wr_en,
    output wire [1:0]   wr_buf,
    output wire [19:0]  wr_addr,
    output wire [63:0]  wr_data
);
    localparam [2:0] S_IDLE = 3'd0, S_LINE = 3'd1, S_PAD = 3'd2, S_DREQ = 3'd3, S_DBEAT = 3'd4;
    reg [2:0]  state;
    reg        after_data;      // after this padding run: 1 = data segment, 0 = next line
    reg [1:0]  buf_sel;
    reg [7:0]  pad_value;
    reg [10:0] ly, height, pad_top, ysize;
    reg [19:0] line_words, left_words, right_words, data_words;
    reg [19:0] cnt, data_left, sram_w;
    reg [31:0] line_dram, dram_w;
    reg [`LOAD_XSTRIDE_W-1:0] xstride;
    reg [4:0]  beats;
    reg        err_seen;
    reg        unpack4, nib_signed;
    reg [31:0] hold_half;

    // 8 packed nibbles -> 8 bytes, element 2i in the low nibble of byte i (ONNX order)
    function [63:0] expand(input [31:0] nibbles, input sgn);
        integer e;
        begin
            for (e = 0; e < 8; e = e + 1)
                expand[8*e +: 8] = {{4{sgn & nibbles[4*e+3]}}, nibbles[4*e +: 4]};
        end
    endfunction

    // Row size in 64-bit words of each buffer.
    localparam integer RW_ACT_I = N / 8, RW_WGT_I = N * N / 8, RW_ACC_I = N / 2, MAXB_I = MAX_BURST;
    localparam [19:0] RW_ACT = RW_ACT_I[19:0], RW_WGT = RW_WGT_I[19:0], RW_PARAM = N[19:0], RW_ACC = RW_ACC_I[19:0];
    function [19:0] row_words(input [1:0] b);
        case (b)
            `BUF_ACT:   row_words = RW_ACT;
            `BUF_WGT:   row_words = RW_WGT;
            `BUF_PARAM: row_words = RW_PARAM;
            default:    row_words = RW_ACC;
        endcase
    endfunction

    wire [19:0] in_rw = row_words(`LOAD_BUF(insn));
    wire [10:0] in_w  = `ZX(11, `LOAD_PAD_LEFT_W, `LOAD_PAD_LEFT(insn)) + `ZX(11, `LOAD_XSIZE_W, `LOAD_XSIZE(insn)) + `ZX(11, `LOAD_PAD_RIGHT_W, `LOAD_PAD_RIGHT(insn));
    wire [10:0] in_h  = `ZX(11, `LOAD_PAD_TOP_W, `LOAD_PAD_TOP(insn)) + `ZX(11, `LOAD_YSIZE_W, `LOAD_YSIZE(insn)) + `ZX(11, `LOAD_PAD_BOTTOM_W, `LOAD_PAD_BOTTOM(insn));
    wire in_empty = (`LOAD_XSIZE(insn) == 10'd0) || (`LOAD_YSIZE(insn) == 10'd0);

    // bus words to the next burst boundary (4 KiB: AXI bursts must not cross it)
    wire [`BOUNDARY_WORD_BITS:0] to_boundary = {1'b1, {`BOUNDARY_WORD_BITS{1'b0}}} - {1'b0, dram_w[`BOUNDARY_WORD_BITS-1:0]};
    localparam [19:0] MAXB = MAXB_I[19:0];
    wire [19:0] tb20 = `ZX(20, `BOUNDARY_WORD_BITS + 1, to_boundary);
    wire [19:0] max_beats = (tb20 < MAXB) ? tb20 : MAXB;
    /* verilator lint_off UNUSEDSIGNAL */
    wire [19:0] next_beats = (data_left < max_beats) ? data_left : max_beats;   // <= MAX_BURST: 5 bits used
    /* verilator lint_on UNUSEDSIGNAL */
    wire pad_line = (ly < pad_top) || (ly >= pad_top + ysize);

    assign busy = (state != S_IDLE);
    assign rd_req = (state == S_DREQ) && (data_left != 20'd0) && !hold;   // the FSM is stalled while holding
    assign rd_addr = {dram_w[28:0], 3'b000};
    assign rd_len = {3'd0, next_beats[4:0]} - 8'd1;
    assign wr_en = hold || ((state == S_PAD) && (cnt != 20'd0)) || ((state == S_DBEAT) && rd_valid);
    assign wr_buf = buf_sel;
    assign wr_addr = sram_w;
    assign wr_data = hold ? expand(hold_half, nib_signed)
                   : (state == S_PAD) ? {8{pad_value}}
                   : unpack4 ? expand(rd_data[31:0], nib_signed) : rd_data;

    always @(posedge clk) begin
        err <= 1'b0;
        if (rst) begin
            state <= S_IDLE;
            hold <= 1'b0;
        end else if (hold) begin       // finish the packed beat before anything else
            hold <= 1'b0;
            sram_w <= sram_w + 20'd1;
        end else case (state)
            S_IDLE: if (issue) begin
                buf_sel <= `LOAD_BUF(insn);
                pad_value <= `LOAD_PAD_VALUE(insn);
                ly <= 11'd0; height <= in_h;
                pad_top <= `ZX(11, `LOAD_PAD_TOP_W, `LOAD_PAD_TOP(insn)); ysize <= `ZX(11, `LOAD_YSIZE_W, `LOAD_YSIZE(insn));
                line_words  <= in_w * in_rw;
                left_words  <= `ZX(20, `LOAD_PAD_LEFT_W, `LOAD_PAD_LEFT(insn)) * in_rw;
                right_words <= `ZX(20, `LOAD_PAD_RIGHT_W, `LOAD_PAD_RIGHT(insn)) * in_rw;
                // DRAM beats per line: half as many when int4 values come packed
                data_words  <= (`ZX(20, `LOAD_XSIZE_W, `LOAD_XSIZE(insn)) * in_rw) >> `LOAD_INT4(insn);
                unpack4 <= `LOAD_INT4(insn);
                nib_signed <= `LOAD_INT4_SIGNED(insn);
                sram_w <= `ZX(20, `LOAD_SRAM_W, `LOAD_SRAM(insn)) * in_rw;
                line_dram <= `LOAD_DRAM_U32(insn);
                xstride <= `LOAD_XSTRIDE(insn);
                err_seen <= 1'b0;
                state <= in_empty ? S_IDLE : S_LINE;
            end
            S_LINE: begin
                if (ly == height) begin
                    state <= S_IDLE;
                end else begin
                    cnt <= pad_line ? line_words : left_words;
                    after_data <= !pad_line;
                    data_left <= data_words;
                    dram_w <= line_dram;
                    state <= S_PAD;
                end
            end
            S_PAD: begin
                if (cnt == 20'd0) begin
                    if (after_data) begin
                        state <= S_DREQ;
                    end else begin
                        ly <= ly + 11'd1;
                        state <= S_LINE;
                    end
                end else begin
                    cnt <= cnt - 20'd1;
                    sram_w <= sram_w + 20'd1;
                end
            end
            S_DREQ: begin
                if (data_left == 20'd0) begin
                    cnt <= right_words;
                    after_data <= 1'b0;
                    line_dram <= line_dram + `ZX(32, `LOAD_XSTRIDE_W, xstride);
                    state <= S_PAD;
                end else if (rd_grant) begin
                    beats <= next_beats[4:0];
                    state <= S_DBEAT;
                end
            end
            default: begin // S_DBEAT
                if (rd_valid) begin
                    sram_w <= sram_w + 20'd1;
                    if (unpack4 && !rd_err && !err_seen) begin
                        hold <= 1'b1;
                        hold_half <= rd_data[63:32];
                    end
                    if (rd_err) err_seen <= 1'b1;
                    if (rd_last) begin
                        dram_w <= dram_w + {27'd0, beats};
                        data_left <= data_left - {15'd0, beats};
                        if (err_seen || rd_err) begin
                            err <= 1'b1;
                            state <= S_IDLE;
                        end else begin
                            state <= S_DREQ;
                        end
                    end
                end
            end
        endcase
    end
endmodule
`default_nettype wire

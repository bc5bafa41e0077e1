// Store unit: buffer (act or acc) -> DRAM, ysize lines of xsize rows.
// One write burst in flight at a time (AW, then W beats, then B), bursts of
// at most MAX_BURST beats that never cross 4 KiB. It starts only when
// `may_start` says no older instruction is still running, so a fault in an
// older instruction can never be followed by a DRAM write (precise faults).
// A soft reset or abort in the middle of a burst completes the burst the
// AXI way: AWVALID stays up until accepted, the beat already on the bus
// keeps its payload until WREADY (AXI forbids changing WSTRB while WVALID
// waits), every later beat goes out with WSTRB = 0, the B response is
// awaited; `flushing` is high meanwhile.
`include "accel_isa.vh"
`default_nettype none
module accel_store #(
    parameter integer N = 8,
    parameter integer MAX_BURST = 16
) (
    input  wire         clk,
    input  wire         rst,          // hard reset: drop everything
    input  wire         cancel,       // soft reset / abort: finish the burst harmlessly
    input  wire         issue,
    /* verilator lint_off UNUSEDSIGNAL */
    input  wire [127:0] insn,           // only this opcode's fields are read
    /* verilator lint_on UNUSEDSIGNAL */
    input  wire         may_start,
    output wire         busy,
    output wire         flushing,
    output reg          err,
    output wire         beat,         // a W beat with data (for the byte counter)
    output wire [1:0]   rd_buf,
    output wire [19:0]  rd_addr,
    input  wire [63:0]  rd_data,
    output wire [31:0]  awaddr,
    output wire [7:0]   awlen,
    output wire         awvalid,
    input  wire         awready,
    output wire [63:0]  wdata,
    output wire [7:0]   wstrb,
    output wire         wlast,
    output wire         wvalid,
    input  wire         wready,
    input  wire [1:0]   bresp,
    input  wire         bvalid,
    output wire         bready
);
    localparam [2:0] S_IDLE = 3'd0, S_WAIT = 3'd1, S_LINE = 3'd2, S_BURST = 3'd3,
                     S_AW = 3'd4, S_W = 3'd5, S_B = 3'd6;
    reg [2:0]  state;
    reg        flush;
    reg        strb_off;     // the beat on the bus carries no data (chosen when the beat starts)
    reg [1:0]  buf_sel;
    reg [9:0]  ly, ysize;
    reg [19:0] data_words, data_left, sram_w;
    reg [31:0] line_dram, dram_w;
    reg [`STORE_XSTRIDE_W-1:0] xstride;
    reg [4:0]  beats, beat_cnt;

    localparam integer RW_ACT_I = N / 8, RW_ACC_I = N / 2, MAXB_I = MAX_BURST;
    localparam [19:0] RW_ACT = RW_ACT_I[19:0], RW_ACC = RW_ACC_I[19:0];
    wire [19:0] in_rw = (`STORE_BUF(insn) == `BUF_ACC) ? RW_ACC : RW_ACT;
    wire in_empty = (`STORE_XSIZE(insn) == 10'd0) || (`STORE_YSIZE(insn) == 10'd0);
    // bus words to the next burst boundary (4 KiB: AXI bursts must not cross it)
    wire [`BOUNDARY_WORD_BITS:0] to_boundary = {1'b1, {`BOUNDARY_WORD_BITS{1'b0}}} - {1'b0, dram_w[`BOUNDARY_WORD_BITS-1:0]};
    localparam [19:0] MAXB = MAXB_I[19:0];
    wire [19:0] tb20 = `ZX(20, `BOUNDARY_WORD_BITS + 1, to_boundary);
    wire [19:0] max_beats = (tb20 < MAXB) ? tb20 : MAXB;
    /* verilator lint_off UNUSEDSIGNAL */
    wire [19:0] next_beats = (data_left < max_beats) ? data_left : max_beats;   // <= MAX_BURST: 5 bits used
    /* verilator lint_on UNUSEDSIGNAL */

    assign busy = (state != S_IDLE);
    assign flushing = flush;
    assign rd_buf = buf_sel;
    assign rd_addr = sram_w;
    assign awaddr = {dram_w[28:0], 3'b000};
    assign awlen = {3'd0, beats} - 8'd1;
    assign awvalid = (state == S_AW);
    assign wvalid = (state == S_W);
    assign wdata = rd_data;
    assign wstrb = strb_off ? 8'h00 : 8'hFF;
    assign wlast = (beat_cnt == beats - 5'd1);
    assign bready = (state == S_B);
    assign beat = wvalid && wready && !strb_off;

    always @(posedge clk) begin
        err <= 1'b0;
        if (rst) begin
            state <= S_IDLE;
            flush <= 1'b0;
            strb_off <= 1'b0;
        end else if (cancel && state != S_AW && state != S_W && state != S_B) begin
            state <= S_IDLE;
        end else begin
            if (cancel) flush <= 1'b1;
            case (state)
                S_IDLE: if (issue) begin
                    buf_sel <= `STORE_BUF(insn);
                    ly <= 10'd0; ysize <= `STORE_YSIZE(insn);
                    data_words <= `ZX(20, `STORE_XSIZE_W, `STORE_XSIZE(insn)) * in_rw;
                    sram_w <= `ZX(20, `STORE_SRAM_W, `STORE_SRAM(insn)) * in_rw;
                    line_dram <= `STORE_DRAM_U32(insn);
                    xstride <= `STORE_XSTRIDE(insn);
                    state <= in_empty ? S_IDLE : S_WAIT;
                end
                S_WAIT: if (may_start) state <= S_LINE;
                S_LINE: begin
                    if (ly == ysize) begin
                        state <= S_IDLE;
                    end else begin
                        data_left <= data_words;
                        dram_w <= line_dram;
                        state <= S_BURST;
                    end
                end
                S_BURST: begin
                    if (data_left == 20'd0) begin
                        ly <= ly + 10'd1;
                        line_dram <= line_dram + `ZX(32, `STORE_XSTRIDE_W, xstride);
                        state <= S_LINE;
                    end else begin
                        beats <= next_beats[4:0];
                        beat_cnt <= 5'd0;
                        state <= S_AW;
                    end
                end
                S_AW: if (awready) begin
                    strb_off <= flush || cancel;
                    state <= S_W;
                end
                S_W: if (wready) begin
                    strb_off <= flush || cancel;   // for the next beat; this one is done
                    sram_w <= sram_w + 20'd1;
                    beat_cnt <= beat_cnt + 5'd1;
                    if (wlast) state <= S_B;
                end
                default: if (bvalid) begin // S_B
                    dram_w <= dram_w + {27'd0, beats};
                    data_left <= data_left - {15'd0, beats};
                    if (flush || cancel) begin
                        flush <= 1'b0;
                        state <= S_IDLE;
                    end else if (bresp != 2'b00) begin
                        err <= 1'b1;
                        state <= S_IDLE;
                    end else begin
                        state <= S_BURST;
                    end
                end
            endcase
        end
    end
endmodule
`default_nettype wire

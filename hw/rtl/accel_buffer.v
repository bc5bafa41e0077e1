// On-chip buffer: DEPTH rows of ROW_WORDS 64-bit words.
// Word ports serve the DMA units (one bus beat per cycle), row ports serve
// the compute unit (one whole row per cycle). The `ra` read port returns
// RA_LANES rows (ra_addr + p*ra_stride), the `rb` read port RB_LANES
// consecutive rows and the `rw` write port writes RW_LANES consecutive rows
// (per-lane enables): the depthwise gemm reads N pixels of activations and
// reads/writes N accumulator rows per cycle; post writes (and reads the
// residual of) POST_ROWS activation rows per cycle.
// (An ASIC would bank by row mod N: consecutive rows are conflict-free, a
// pixel stride of 2 needs 2N banks.) Reads are combinational
// (register-file style) so the compute unit needs no read pipeline and has
// no read-after-write hazards; an ASIC would use SRAM macros plus a
// one-cycle read pipeline with forwarding. The dispatcher guarantees that
// the two writers never target the same word in the same cycle.
`default_nettype none
module accel_buffer #(
    parameter integer DEPTH = 64,
    parameter integer ROW_WORDS = 1,
    parameter integer AW = 12,       // row address width
    parameter integer WAW = 12,      // word address width
    parameter integer RA_LANES = 1,  // rows returned by the ra port
    parameter integer RB_LANES = 1,  // rows returned by the rb port
    parameter integer RW_LANES = 1   // rows written by the rw port
) (
    input  wire                      clk,
    input  wire                      ww_en,
    input  wire [WAW-1:0]            ww_addr,
    input  wire [63:0]               ww_data,
    input  wire [RW_LANES-1:0]       rw_en,
    input  wire [AW-1:0]             rw_addr,
    input  wire [64*ROW_WORDS*RW_LANES-1:0] rw_data,
    input  wire [AW-1:0]             ra_addr,
    input  wire [15:0]               ra_stride,
    output wire [64*ROW_WORDS*RA_LANES-1:0] ra_data,
    input  wire [AW-1:0]             rb_addr,
    output wire [64*ROW_WORDS*RB_LANES-1:0] rb_data,
    input  wire [WAW-1:0]            wr_addr,
    output wire [63:0]               wr_data
);
    localparam integer WORDS = DEPTH * ROW_WORDS;
    localparam integer IW = (WORDS > 1) ? $clog2(WORDS) : 1;
    reg [63:0] mem [0:WORDS-1];

    // Out-of-range addresses only occur while a port is idle: read as zero.
    function [63:0] word_at(input [31:0] idx);
        word_at = (idx < WORDS) ? mem[idx[IW-1:0]] : 64'd0;
    endfunction

    genvar k, p;
    generate
        for (p = 0; p < RA_LANES; p = p + 1) begin : g_lane
            wire [31:0] row = {{(32-AW){1'b0}}, ra_addr} + p * {16'd0, ra_stride};
            for (k = 0; k < ROW_WORDS; k = k + 1) begin : g_word
                assign ra_data[64*(p*ROW_WORDS+k) +: 64] = word_at(row * ROW_WORDS + k);
            end
        end
        for (p = 0; p < RB_LANES; p = p + 1) begin : g_lane_b
            for (k = 0; k < ROW_WORDS; k = k + 1) begin : g_word
                assign rb_data[64*(p*ROW_WORDS+k) +: 64] = word_at(({{(32-AW){1'b0}}, rb_addr} + p) * ROW_WORDS + k);
            end
        end
    endgenerate
    assign wr_data = word_at({{(32-WAW){1'b0}}, wr_addr});

    // The dispatcher range-checks every instruction, so write addresses are in range
    // and only their low IW bits matter.
    /* verilator lint_off UNUSEDSIGNAL */
    wire [31:0] ww_idx = {{(32-WAW){1'b0}}, ww_addr};
    function [IW-1:0] row_word(input [AW-1:0] row, input integer lane, input integer word);
        reg [31:0] flat;
        begin
            flat = ({{(32-AW){1'b0}}, row} + lane) * ROW_WORDS + word;
            row_word = flat[IW-1:0];
        end
    endfunction
    /* verilator lint_on UNUSEDSIGNAL */
    integer w, l;
    always @(posedge clk) begin
        for (l = 0; l < RW_LANES; l = l + 1)
            if (rw_en[l])
                for (w = 0; w < ROW_WORDS; w = w + 1)
                    mem[row_word(rw_addr, l, w)] <= rw_data[64*(l*ROW_WORDS+w) +: 64];
        if (ww_en)
            mem[ww_idx[IW-1:0]] <= ww_data;
    end
endmodule
`default_nettype wire

// Instruction fetch: reads the program (insn_count 128-bit instructions from
// insn_addr) in bursts of up to MAX_BURST beats into an IQ_DEPTH-entry queue.
// A burst is only requested when the queue has room for all of it, so the
// read channel never waits on the queue. A bus error marks the instruction
// (the dispatcher reports it when that instruction reaches the head) and
// stops further fetching.
`default_nettype none
`include "accel_isa.vh"

module accel_fetch #(
    parameter integer IQ_DEPTH = 16,
    parameter integer MAX_BURST = 16
) (
    input  wire         clk,
    input  wire         rst,
    input  wire         start,
    /* verilator lint_off UNUSEDSIGNAL */
    input  wire [31:0]  insn_addr,      // 16-byte aligned: bits [3:0] are ignored
    /* verilator lint_on UNUSEDSIGNAL */
    input  wire [31:0]  insn_count,
    output wire         rd_req,
    output wire [31:0]  rd_addr,
    output wire [7:0]   rd_len,
    input  wire         rd_grant,
    input  wire         rd_valid,
    input  wire [63:0]  rd_data,
    input  wire         rd_err,
    input  wire         rd_last,
    output wire         head_valid,
    output wire [127:0] head_insn,
    output wire         head_err,
    input  wire         pop
);
    localparam integer QW = $clog2(IQ_DEPTH);
    localparam integer PER_BURST = MAX_BURST / 2;   // instructions per burst

    reg [127:0] q_insn [0:IQ_DEPTH-1];
    reg         q_err  [0:IQ_DEPTH-1];
    reg [QW-1:0] wr_ptr, rd_ptr;
    reg [QW:0]   used, reserved;
    reg [31:0]   next_pc, base;
    reg          active, waiting, half;
    reg [63:0]   low_word;
    reg          low_err;

    wire [31:0] remaining = insn_count - next_pc;
    wire [31:0] addr = base + {next_pc[27:0], 4'd0};
    // instructions to the next burst boundary (4 KiB)
    wire [`BOUNDARY_INSN_BITS:0] to_boundary = {1'b1, {`BOUNDARY_INSN_BITS{1'b0}}}
                                               - {1'b0, addr[`BOUNDARY_INSN_BITS+3:4]};
    wire [31:0] k0 = (remaining < PER_BURST) ? remaining : PER_BURST;
    wire [31:0] k  = (k0 < `ZX(32, `BOUNDARY_INSN_BITS + 1, to_boundary)) ? k0 : `ZX(32, `BOUNDARY_INSN_BITS + 1, to_boundary);
    wire [QW:0] free = IQ_DEPTH[QW:0] - used - reserved;

    assign rd_req = active && !waiting && (remaining != 32'd0) && ({{(31-QW){1'b0}}, free} >= k);
    assign rd_addr = addr;
    assign rd_len = {k[6:0], 1'b0} - 8'd1;
    assign head_valid = (used != 0);
    assign head_insn = q_insn[rd_ptr];
    assign head_err = q_err[rd_ptr];

    wire push = rd_valid && half;
    always @(posedge clk) begin
        if (rst) begin
            wr_ptr <= 0; rd_ptr <= 0; used <= 0; reserved <= 0;
            waiting <= 1'b0; half <= 1'b0; next_pc <= 32'd0;
            active <= start;                       // a start also clears the queue
            base <= {insn_addr[31:4], 4'd0};
        end else begin
            if (rd_req && rd_grant) begin
                waiting <= 1'b1;
                next_pc <= next_pc + k;
            end
            reserved <= reserved + ((rd_req && rd_grant) ? k[QW:0] : {(QW+1){1'b0}})
                                  - {{QW{1'b0}}, push};
            if (rd_valid) begin
                half <= !half;
                if (!half) begin
                    low_word <= rd_data;
                    low_err <= rd_err;
                end else begin
                    q_insn[wr_ptr] <= {rd_data, low_word};
                    q_err[wr_ptr] <= low_err | rd_err;
                    wr_ptr <= wr_ptr + 1'b1;
                    if (low_err | rd_err) active <= 1'b0;
                end
                if (rd_last) waiting <= 1'b0;
            end
            if (pop) rd_ptr <= rd_ptr + 1'b1;
            used <= used + {{QW{1'b0}}, push} - {{QW{1'b0}}, pop};
        end
    end
endmodule
`default_nettype wire

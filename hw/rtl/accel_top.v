// edgekit accelerator top level.
//
//   CSR block --start--> fetch --IQ--> dispatcher --+--> load unit    --+
//                                         |         +--> compute unit   +--> buffers (act, wgt, param, acc)
//                                         |         +--> store unit   --+
//                                   hazard check                 AXI4 master (read: fetch+load, write: store)
//
// Decoupled units, one instruction each. The dispatcher issues in program
// order and, instead of software dependency tokens, interlocks in hardware:
// an instruction issues only when its unit is free and its buffer / DRAM
// footprint does not conflict (read-after-write, write-after-read,
// write-after-write) with what the other units are running. Any program
// therefore gives the same result as sequential execution (the golden
// model), and a compiler gets overlap by double-buffering alone.
// Faults are precise: decode faults wait for older work to drain; bus
// faults abort younger work; stores start only when they are the oldest
// instruction in flight, so no DRAM write follows a fault.
`include "accel_isa.vh"
`default_nettype none
module accel_top #(
    parameter integer N = `DEF_N,
    parameter integer ACT_DEPTH = `DEF_ACT_DEPTH,
    parameter integer WGT_DEPTH = `DEF_WGT_DEPTH,
    parameter integer ACC_DEPTH = `DEF_ACC_DEPTH,
    parameter integer PARAM_DEPTH = `DEF_PARAM_DEPTH,
    parameter integer IQ_DEPTH = `DEF_IQ_DEPTH,
    parameter integer MAX_BURST = `DEF_MAX_BURST,
    parameter integer POST_ROWS = `DEF_POST_ROWS   // rows post requantizes per cycle (1..N)
) (
    input  wire        clk,
    input  wire        rst_n,
    // control/status block (32-bit registers, read data one cycle after the request)
    input  wire        csr_valid,
    input  wire        csr_write,
    input  wire [7:0]  csr_addr,
    input  wire [31:0] csr_wdata,
    output reg  [31:0] csr_rdata,
    output wire        irq,
    // AXI4 master subset: single ID, INCR bursts of 64-bit beats, one burst in flight per direction
    output reg  [31:0] m_axi_araddr,
    output reg  [7:0]  m_axi_arlen,
    output wire [2:0]  m_axi_arsize,
    output wire [1:0]  m_axi_arburst,
    output reg         m_axi_arvalid,
    input  wire        m_axi_arready,
    input  wire [63:0] m_axi_rdata,
    input  wire [1:0]  m_axi_rresp,
    input  wire        m_axi_rlast,
    input  wire        m_axi_rvalid,
    output wire        m_axi_rready,
    output wire [31:0] m_axi_awaddr,
    output wire [7:0]  m_axi_awlen,
    output wire [2:0]  m_axi_awsize,
    output wire [1:0]  m_axi_awburst,
    output wire        m_axi_awvalid,
    input  wire        m_axi_awready,
    output wire [63:0] m_axi_wdata,
    output wire [7:0]  m_axi_wstrb,
    output wire        m_axi_wlast,
    output wire        m_axi_wvalid,
    input  wire        m_axi_wready,
    input  wire [1:0]  m_axi_bresp,
    input  wire        m_axi_bvalid,
    output wire        m_axi_bready
);
    localparam integer ACT_AW = `ACT_AW, WGT_AW = `WGT_AW, ACC_AW = `ACC_AW, PARAM_AW = `PARAM_AW;
    localparam integer NB = 5;                 // footprint slots: act, wgt, param, acc, dram
    localparam integer DRAM = 4;
    localparam integer NC = `NUM_COUNTERS;

    wire rst = !rst_n;
    assign m_axi_arsize = 3'b011;  assign m_axi_arburst = 2'b01;
    assign m_axi_awsize = 3'b011;  assign m_axi_awburst = 2'b01;

    // ------------------------------------------------------------ CSRs
    reg [31:0] insn_addr, insn_count, err_pc, pc;
    reg [3:0]  err_code;
    reg        running, done, error;
    wire ctrl_wr = csr_valid && csr_write && (csr_addr == `CSR_CTRL);
    wire soft_reset = ctrl_wr && csr_wdata[`CTRL_SOFT_RESET];
    wire start = ctrl_wr && csr_wdata[`CTRL_START] && !csr_wdata[`CTRL_SOFT_RESET] && !running;
    wire unit_rst = rst || soft_reset || start;

    // ------------------------------------------------------------ units
    wire        f_req, l_req, f_grant, l_grant;
    wire [31:0] f_addr, l_addr;
    wire [7:0]  f_len, l_len;
    wire        head_valid, head_err;
    wire [127:0] head;
    wire        pop;
    wire        ld_busy, ld_err, ld_hold, cp_busy, st_busy, st_flushing, st_err, st_beat, mac_step;
    reg         issue_ld, issue_cp, issue_st;
    wire        abort_ld, abort_cp, abort_st;
    wire        r_fetch, r_load;           // routed read beats

    accel_fetch #(.IQ_DEPTH(IQ_DEPTH), .MAX_BURST(MAX_BURST)) u_fetch (
        .clk(clk), .rst(unit_rst), .start(start), .insn_addr(insn_addr), .insn_count(insn_count),
        .rd_req(f_req), .rd_addr(f_addr), .rd_len(f_len), .rd_grant(f_grant),
        .rd_valid(r_fetch), .rd_data(m_axi_rdata), .rd_err(m_axi_rresp != 2'b00), .rd_last(m_axi_rlast),
        .head_valid(head_valid), .head_insn(head), .head_err(head_err), .pop(pop));

    wire        lw_en;
    wire [1:0]  lw_buf;
    wire [19:0] lw_addr;
    wire [63:0] lw_data;
    accel_load #(.N(N), .MAX_BURST(MAX_BURST)) u_load (
        .clk(clk), .rst(unit_rst || abort_ld), .issue(issue_ld), .insn(head), .busy(ld_busy), .err(ld_err), .hold(ld_hold),
        .rd_req(l_req), .rd_addr(l_addr), .rd_len(l_len), .rd_grant(l_grant),
        .rd_valid(r_load), .rd_data(m_axi_rdata), .rd_err(m_axi_rresp != 2'b00), .rd_last(m_axi_rlast),
        .wr_en(lw_en), .wr_buf(lw_buf), .wr_addr(lw_addr), .wr_data(lw_data));

    wire [ACT_AW-1:0]   act_ra, res_ra, act_wa;
    wire [WGT_AW-1:0]   wgt_ra;
    wire [ACC_AW-1:0]   acc_ra, acc_wa;
    wire [PARAM_AW-1:0] par_ra;
    wire [8*N*POST_ROWS-1:0] res_rd, act_wd;  // post: POST_ROWS consecutive rows
    wire [8*N*N-1:0]    act_rd, wgt_rd;      // act: N read lanes (depthwise pixels)
    wire [32*N*N-1:0]   acc_rd, acc_wd;      // acc: N consecutive rows
    wire [64*N-1:0]     par_rd;
    wire [15:0]         act_rs;
    wire [N-1:0]        acc_we;
    wire [POST_ROWS-1:0] act_we;
    accel_compute #(.N(N), .ACT_AW(ACT_AW), .WGT_AW(WGT_AW), .ACC_AW(ACC_AW), .PARAM_AW(PARAM_AW),
                    .POST_ROWS(POST_ROWS)) u_compute (
        .clk(clk), .rst(unit_rst || abort_cp), .issue(issue_cp), .insn(head), .busy(cp_busy), .mac_step(mac_step),
        .act_ra(act_ra), .act_rs(act_rs), .act_rd(act_rd), .res_ra(res_ra), .res_rd(res_rd), .wgt_ra(wgt_ra), .wgt_rd(wgt_rd),
        .acc_ra(acc_ra), .acc_rd(acc_rd), .par_ra(par_ra), .par_rd(par_rd),
        .acc_we(acc_we), .acc_wa(acc_wa), .acc_wd(acc_wd), .act_we(act_we), .act_wa(act_wa), .act_wd(act_wd));

    wire [1:0]  sr_buf;
    wire [19:0] sr_addr;
    wire [63:0] sr_act, sr_acc;
    reg  [31:0] ld_pc, cp_pc, st_pc;
    reg         fault_pending;
    reg  [31:0] fault_pc;
    reg  [3:0]  fault_code;
    // A store starts only as the oldest instruction in flight and never after an older fault.
    wire st_may_start = !(ld_busy && ld_pc < st_pc) && !(cp_busy && cp_pc < st_pc)
                     && !(ld_err && ld_pc < st_pc) && !(fault_pending && fault_pc < st_pc);
    accel_store #(.N(N), .MAX_BURST(MAX_BURST)) u_store (
        .clk(clk), .rst(rst), .cancel(soft_reset || abort_st), .issue(issue_st), .insn(head),
        .may_start(st_may_start), .busy(st_busy), .flushing(st_flushing), .err(st_err), .beat(st_beat),
        .rd_buf(sr_buf), .rd_addr(sr_addr), .rd_data(sr_buf == `BUF_ACC ? sr_acc : sr_act),
        .awaddr(m_axi_awaddr), .awlen(m_axi_awlen), .awvalid(m_axi_awvalid), .awready(m_axi_awready),
        .wdata(m_axi_wdata), .wstrb(m_axi_wstrb), .wlast(m_axi_wlast), .wvalid(m_axi_wvalid), .wready(m_axi_wready),
        .bresp(m_axi_bresp), .bvalid(m_axi_bvalid), .bready(m_axi_bready));

    // ------------------------------------------------------------ buffers
    wire [63:0] unused_word0, unused_word1, unused_word2;
    wire [8*N*N-1:0] unused_wgt_b;
    wire [64*N-1:0]  unused_par_b;
    wire [32*N-1:0]  unused_acc_b;
    accel_buffer #(.DEPTH(ACT_DEPTH), .ROW_WORDS(N/8), .AW(ACT_AW), .WAW(20), .RA_LANES(N),
                   .RB_LANES(POST_ROWS), .RW_LANES(POST_ROWS)) u_act (
        .clk(clk), .ww_en(lw_en && lw_buf == `BUF_ACT), .ww_addr(lw_addr), .ww_data(lw_data),
        .rw_en(act_we), .rw_addr(act_wa), .rw_data(act_wd),
        .ra_addr(act_ra), .ra_stride(act_rs), .ra_data(act_rd), .rb_addr(res_ra), .rb_data(res_rd),
        .wr_addr(sr_addr), .wr_data(sr_act));
    accel_buffer #(.DEPTH(WGT_DEPTH), .ROW_WORDS(N*N/8), .AW(WGT_AW), .WAW(20)) u_wgt (
        .clk(clk), .ww_en(lw_en && lw_buf == `BUF_WGT), .ww_addr(lw_addr), .ww_data(lw_data),
        .rw_en(1'b0), .rw_addr({WGT_AW{1'b0}}), .rw_data({(8*N*N){1'b0}}),
        .ra_addr(wgt_ra), .ra_stride(16'd0), .ra_data(wgt_rd), .rb_addr({WGT_AW{1'b0}}), .rb_data(unused_wgt_b),
        .wr_addr(20'd0), .wr_data(unused_word0));
    accel_buffer #(.DEPTH(PARAM_DEPTH), .ROW_WORDS(N), .AW(PARAM_AW), .WAW(20)) u_param (
        .clk(clk), .ww_en(lw_en && lw_buf == `BUF_PARAM), .ww_addr(lw_addr), .ww_data(lw_data),
        .rw_en(1'b0), .rw_addr({PARAM_AW{1'b0}}), .rw_data({(64*N){1'b0}}),
        .ra_addr(par_ra), .ra_stride(16'd0), .ra_data(par_rd), .rb_addr({PARAM_AW{1'b0}}), .rb_data(unused_par_b),
        .wr_addr(20'd0), .wr_data(unused_word1));
    accel_buffer #(.DEPTH(ACC_DEPTH), .ROW_WORDS(N/2), .AW(ACC_AW), .WAW(20), .RA_LANES(N), .RW_LANES(N)) u_acc (
        .clk(clk), .ww_en(lw_en && lw_buf == `BUF_ACC), .ww_addr(lw_addr), .ww_data(lw_data),
        .rw_en(acc_we), .rw_addr(acc_wa), .rw_data(acc_wd),
        .ra_addr(acc_ra), .ra_stride(16'd1), .ra_data(acc_rd), .rb_addr({ACC_AW{1'b0}}), .rb_data(unused_acc_b),
        .wr_addr(sr_addr), .wr_data(sr_acc));
    assign unused_word2 = 64'd0;

    // ------------------------------------------------------------ read arbiter
    // One read burst in flight; fetch and load alternate when both ask.
    // A requester that is reset or aborted mid-burst is replaced by DROP,
    // which still accepts its remaining beats (the AXI way to abandon a read).
    localparam [1:0] OWN_FETCH = 2'd0, OWN_LOAD = 2'd1, OWN_DROP = 2'd2;
    localparam [1:0] R_IDLE = 2'd0, R_ADDR = 2'd1, R_DATA = 2'd2;
    reg [1:0] r_state, owner;
    reg       last_was_load;
    wire pick_load = l_req && (!f_req || !last_was_load);
    assign f_grant = (r_state == R_IDLE) && f_req && !pick_load;
    assign l_grant = (r_state == R_IDLE) && pick_load;
    // (the load unit holds RREADY low for one cycle per packed int4 beat)
    assign m_axi_rready = (r_state == R_DATA) && !(owner == OWN_LOAD && ld_hold);
    wire r_beat = m_axi_rvalid && m_axi_rready;
    assign r_fetch = r_beat && owner == OWN_FETCH;
    assign r_load = r_beat && owner == OWN_LOAD;
    wire drop_fetch = rst || soft_reset || start;
    wire drop_load = soft_reset || start || abort_ld;
    always @(posedge clk) begin
        if (rst) begin
            r_state <= R_IDLE; m_axi_arvalid <= 1'b0; owner <= OWN_DROP; last_was_load <= 1'b0;
        end else begin
            case (r_state)
                R_IDLE: if (f_grant || l_grant) begin
                    m_axi_araddr <= l_grant ? l_addr : f_addr;
                    m_axi_arlen <= l_grant ? l_len : f_len;
                    m_axi_arvalid <= 1'b1;
                    owner <= l_grant ? OWN_LOAD : OWN_FETCH;
                    last_was_load <= l_grant;
                    r_state <= R_ADDR;
                end
                R_ADDR: if (m_axi_arready) begin
                    m_axi_arvalid <= 1'b0;
                    r_state <= R_DATA;
                end
                default: if (r_beat && m_axi_rlast) r_state <= R_IDLE;
            endcase
            if ((drop_fetch && owner == OWN_FETCH) || (drop_load && owner == OWN_LOAD))
                owner <= OWN_DROP;
        end
    end

    // ------------------------------------------------------------ decode + footprint
    function [31:0] row_words(input [1:0] b);
        case (b)
            `BUF_ACT:   row_words = N / 8;
            `BUF_WGT:   row_words = N * N / 8;
            `BUF_PARAM: row_words = N;
            default:    row_words = N / 2;
        endcase
    endfunction
    function [31:0] depth(input [1:0] b);
        case (b)
            `BUF_ACT:   depth = ACT_DEPTH;
            `BUF_WGT:   depth = WGT_DEPTH;
            `BUF_PARAM: depth = PARAM_DEPTH;
            default:    depth = ACC_DEPTH;
        endcase
    endfunction
    // last row a two-level loop touches: base + (outer-1)*so + (inner-1)*si
    function [31:0] loop_last(input [31:0] base, input [31:0] outer, input [31:0] inner,
                              input [31:0] so, input [31:0] si);
        loop_last = base + (outer - 32'd1) * so + (inner - 32'd1) * si;
    endfunction

    wire [3:0] opc = `OPCODE(head);
    reg  [1:0] d_unit;                 // 0 load, 1 compute, 2 store, 3 control
    reg  [3:0] d_err;                  // error code of the head instruction (0: none)
    reg  [NB-1:0] fp_en, fp_wr;
    reg  [32*NB-1:0] fp_lo, fp_hi;
    reg  [31:0] t_rows, t_last, t_dend, t_x, t_y, t_rw;
    reg  [1:0]  t_buf;

    task automatic touch(input integer slot, input [31:0] lo, input [31:0] hi, input wr);
        begin
            fp_en[slot] = 1'b1;
            fp_wr[slot] = fp_wr[slot] | wr;
            fp_lo[32*slot +: 32] = lo;
            fp_hi[32*slot +: 32] = hi;
        end
    endtask

    always @(*) begin
        d_unit = 2'd3; d_err = `ERR_NONE;
        fp_en = {NB{1'b0}}; fp_wr = {NB{1'b0}}; fp_lo = {(32*NB){1'b0}}; fp_hi = {(32*NB){1'b0}};
        t_rows = 32'd0; t_last = 32'd0; t_dend = 32'd0; t_x = 32'd0; t_y = 32'd0; t_rw = 32'd0; t_buf = 2'd0;
        case (opc)
            `OP_LOAD, `OP_STORE: begin
                d_unit = (opc == `OP_LOAD) ? 2'd0 : 2'd2;
                t_buf = (opc == `OP_LOAD) ? `LOAD_BUF(head) : `STORE_BUF(head);
                t_x = `LOAD_XSIZE_U32(head); t_y = `LOAD_YSIZE_U32(head);
                if (opc == `OP_STORE) begin
                    t_x = `STORE_XSIZE_U32(head); t_y = `STORE_YSIZE_U32(head);
                end
                t_rw = row_words(t_buf);
                if (opc == `OP_LOAD)
                    t_rows = (`LOAD_PAD_TOP_U32(head) + t_y + `LOAD_PAD_BOTTOM_U32(head))
                           * (`LOAD_PAD_LEFT_U32(head) + t_x + `LOAD_PAD_RIGHT_U32(head));
                else
                    t_rows = t_x * t_y;
                if (opc == `OP_LOAD)
                    t_dend = `LOAD_DRAM_U32(head) + (t_y - 32'd1) * `LOAD_XSTRIDE_U32(head)
                           + ((t_x * t_rw) >> `LOAD_INT4(head));
                else
                    t_dend = `STORE_DRAM_U32(head) + (t_y - 32'd1) * `STORE_XSTRIDE_U32(head) + t_x * t_rw;
                if (opc == `OP_STORE && (t_buf == `BUF_WGT || t_buf == `BUF_PARAM)) begin
                    d_err = `ERR_BAD_OPERAND;
                end else if (opc == `OP_LOAD && `LOAD_INT4(head) == 1'b1 && t_x != 0 && t_y != 0
                             && (t_x * t_rw) % 2 != 0) begin
                    d_err = `ERR_BAD_OPERAND;   // packed int4 lines must fill whole bus words
                end else if (t_x != 0 && t_y != 0) begin
                    // t_dend < 2^33 always; beyond 2^29 words is outside the 32-bit byte address space
                    if ({20'd0, (opc == `OP_LOAD) ? `LOAD_SRAM(head) : `STORE_SRAM(head)} + t_rows > depth(t_buf)
                        || t_dend > 32'h2000_0000)
                        d_err = `ERR_ADDR_RANGE;
                    touch({30'd0, t_buf}, {20'd0, (opc == `OP_LOAD) ? `LOAD_SRAM(head) : `STORE_SRAM(head)},
                          {20'd0, (opc == `OP_LOAD) ? `LOAD_SRAM(head) : `STORE_SRAM(head)} + t_rows - 32'd1,
                          opc == `OP_LOAD);
                    touch(DRAM, {3'd0, (opc == `OP_LOAD) ? `LOAD_DRAM(head) : `STORE_DRAM(head)}, t_dend - 32'd1,
                          opc == `OP_STORE);
                end
                if ((head >> ((opc == `OP_LOAD) ? `LOAD_USED : `STORE_USED)) != 128'd0) d_err = `ERR_RESERVED_BITS;
            end
            `OP_GEMM: begin
                d_unit = 2'd1;
                if (`GEMM_OUTER(head) != 0 && `GEMM_INNER(head) != 0) begin
                    t_last = loop_last(`GEMM_ACC_U32(head), `GEMM_OUTER_U32(head), `GEMM_INNER_U32(head),
                                       `GEMM_ACC_SO_U32(head), `GEMM_ACC_SI_U32(head));
                    if (t_last >= ACC_DEPTH) d_err = `ERR_ADDR_RANGE;
                    touch(3, `GEMM_ACC_U32(head), t_last, 1'b1);
                    t_last = loop_last(`GEMM_ACT_U32(head), `GEMM_OUTER_U32(head), `GEMM_INNER_U32(head),
                                       `GEMM_ACT_SO_U32(head), `GEMM_ACT_SI_U32(head));
                    if (t_last >= ACT_DEPTH) d_err = `ERR_ADDR_RANGE;
                    touch(0, `GEMM_ACT_U32(head), t_last, 1'b0);
                    t_last = loop_last(`GEMM_WGT_U32(head), `GEMM_OUTER_U32(head), `GEMM_INNER_U32(head),
                                       `GEMM_WGT_SO_U32(head), `GEMM_WGT_SI_U32(head));
                    if (t_last >= WGT_DEPTH) d_err = `ERR_ADDR_RANGE;
                    touch(1, `GEMM_WGT_U32(head), t_last, 1'b0);
                end
                // depthwise lanes write N consecutive acc rows from one weight row of the tile
                if (`GEMM_DW(head) && (`GEMM_ACC_SI(head) != 8'd1 || `GEMM_WGT_SI(head) != 8'd0
                                       || `GEMM_DW_ROW_U32(head) >= N))
                    d_err = `ERR_BAD_OPERAND;
                if ((head >> `GEMM_USED) != 128'd0) d_err = `ERR_RESERVED_BITS;
            end
            `OP_VEC: begin
                d_unit = 2'd1;
                if (`VEC_OUTER(head) != 0 && `VEC_INNER(head) != 0) begin
                    t_last = loop_last(`VEC_ACC_U32(head), `VEC_OUTER_U32(head), `VEC_INNER_U32(head),
                                       `VEC_ACC_SO_U32(head), `VEC_ACC_SI_U32(head));
                    if (t_last >= ACC_DEPTH) d_err = `ERR_ADDR_RANGE;
                    touch(3, `VEC_ACC_U32(head), t_last, 1'b1);
                    t_last = loop_last(`VEC_ACT_U32(head), `VEC_OUTER_U32(head), `VEC_INNER_U32(head),
                                       `VEC_ACT_SO_U32(head), `VEC_ACT_SI_U32(head));
                    if (t_last >= ACT_DEPTH) d_err = `ERR_ADDR_RANGE;
                    touch(0, `VEC_ACT_U32(head), t_last, 1'b0);
                end
                if ((head >> `VEC_USED) != 128'd0) d_err = `ERR_RESERVED_BITS;
            end
            `OP_POST: begin
                d_unit = 2'd1;
                t_rows = `POST_COUNT_U32(head);
                if (t_rows != 0) begin
                    if (`POST_ACC_U32(head) + t_rows > ACC_DEPTH || `POST_OUT_U32(head) + t_rows > ACT_DEPTH
                        || `POST_PARAM_U32(head) >= PARAM_DEPTH
                        || (`POST_RES_EN(head) && `POST_RES_U32(head) + t_rows > ACT_DEPTH))
                        d_err = `ERR_ADDR_RANGE;
                    touch(3, `POST_ACC_U32(head), `POST_ACC_U32(head) + t_rows - 32'd1, 1'b0);
                    touch(2, `POST_PARAM_U32(head), `POST_PARAM_U32(head), 1'b0);
                    // act: the hull of the output rows and the residual rows
                    t_x = `POST_OUT_U32(head);
                    t_y = `POST_RES_U32(head);
                    if (`POST_RES_EN(head))
                        touch(0, (t_y < t_x) ? t_y : t_x, ((t_y > t_x) ? t_y : t_x) + t_rows - 32'd1, 1'b1);
                    else
                        touch(0, t_x, t_x + t_rows - 32'd1, 1'b1);
                end
                if ((head >> `POST_USED) != 128'd0) d_err = `ERR_RESERVED_BITS;
            end
            `OP_FENCE, `OP_FINISH: begin
                if ((head >> 4) != 128'd0) d_err = `ERR_RESERVED_BITS;
            end
            default: d_err = `ERR_ILLEGAL_OPCODE;
        endcase
        if (head_err) d_err = `ERR_FETCH_BUS;
    end

    // ------------------------------------------------------------ hazards
    reg [NB-1:0] ld_en, ld_wr, cp_en, cp_wr, st_en, st_wr;
    reg [32*NB-1:0] ld_lo, ld_hi, cp_lo, cp_hi, st_lo, st_hi;
    function conflicts(input [NB-1:0] en, input [NB-1:0] wr, input [32*NB-1:0] lo, input [32*NB-1:0] hi);
        integer s;
        begin
            conflicts = 1'b0;
            for (s = 0; s < NB; s = s + 1)
                if (fp_en[s] && en[s] && (fp_wr[s] || wr[s])
                    && fp_lo[32*s +: 32] <= hi[32*s +: 32] && lo[32*s +: 32] <= fp_hi[32*s +: 32])
                    conflicts = 1'b1;
        end
    endfunction
    wire hazard = (ld_busy && conflicts(ld_en, ld_wr, ld_lo, ld_hi))
               || (cp_busy && conflicts(cp_en, cp_wr, cp_lo, cp_hi))
               || (st_busy && conflicts(st_en, st_wr, st_lo, st_hi));
    wire all_idle = !ld_busy && !cp_busy && !st_busy;
    wire unit_free = (d_unit == 2'd0) ? !ld_busy : (d_unit == 2'd1) ? !cp_busy : (d_unit == 2'd2) ? !st_busy : all_idle;
    wire at_end = (pc == insn_count);
    wire dispatching = running && !fault_pending && !at_end && head_valid;
    wire head_ok = dispatching && d_err == `ERR_NONE;
    wire go = head_ok && unit_free && !hazard;
    wire finishing = running && !fault_pending && ((head_ok && opc == `OP_FINISH && all_idle) || (at_end && all_idle));
    assign pop = go;
    always @(*) begin
        issue_ld = go && d_unit == 2'd0;
        issue_cp = go && d_unit == 2'd1;
        issue_st = go && d_unit == 2'd2;
    end

    // ------------------------------------------------------------ faults
    wire dec_fault = dispatching && d_err != `ERR_NONE;
    assign abort_ld = fault_pending && ld_busy && ld_pc > fault_pc;
    assign abort_cp = fault_pending && cp_busy && cp_pc > fault_pc;
    assign abort_st = fault_pending && st_busy && !st_flushing && st_pc > fault_pc;

    always @(posedge clk) begin
        if (unit_rst) begin
            fault_pending <= 1'b0;
        end else if (st_err && (!fault_pending || st_pc < fault_pc)) begin
            fault_pending <= 1'b1; fault_pc <= st_pc; fault_code <= `ERR_STORE_BUS;
        end else if (ld_err && (!fault_pending || ld_pc < fault_pc)) begin
            fault_pending <= 1'b1; fault_pc <= ld_pc; fault_code <= `ERR_LOAD_BUS;
        end else if (dec_fault) begin
            fault_pending <= 1'b1; fault_pc <= pc; fault_code <= d_err;
        end else if (fault_pending && all_idle && running) begin
            fault_pending <= 1'b0;
        end
    end

    always @(posedge clk) begin
        if (rst) begin
            running <= 1'b0; done <= 1'b0; error <= 1'b0; err_code <= `ERR_NONE; err_pc <= 32'd0;
            insn_addr <= 32'd0; insn_count <= 32'd0; pc <= 32'd0;
        end else begin
            if (csr_valid && csr_write && csr_addr == `CSR_INSN_ADDR) insn_addr <= csr_wdata;
            if (csr_valid && csr_write && csr_addr == `CSR_INSN_COUNT) insn_count <= csr_wdata;
            if (soft_reset) begin
                running <= 1'b0; done <= 1'b0; error <= 1'b0; err_code <= `ERR_NONE; err_pc <= 32'd0;
            end else if (start) begin
                running <= 1'b1; done <= 1'b0; error <= 1'b0; err_code <= `ERR_NONE; err_pc <= 32'd0;
                pc <= 32'd0;
            end else begin
                if (go || (head_ok && opc == `OP_FINISH && all_idle)) pc <= pc + 32'd1;
                if (finishing) begin
                    running <= 1'b0; done <= 1'b1;
                end
                // (a unit's error pulse arrives as it goes idle: let it update the fault first)
                if (fault_pending && all_idle && !ld_err && !st_err && running) begin
                    running <= 1'b0; error <= 1'b1; err_code <= fault_code; err_pc <= fault_pc;
                end
            end
            if (issue_ld) begin ld_pc <= pc; ld_en <= fp_en; ld_wr <= fp_wr; ld_lo <= fp_lo; ld_hi <= fp_hi; end
            if (issue_cp) begin cp_pc <= pc; cp_en <= fp_en; cp_wr <= fp_wr; cp_lo <= fp_lo; cp_hi <= fp_hi; end
            if (issue_st) begin st_pc <= pc; st_en <= fp_en; st_wr <= fp_wr; st_lo <= fp_lo; st_hi <= fp_hi; end
        end
    end

    // ------------------------------------------------------------ counters
    reg [63:0] counters [0:NC-1];
    wire [NC-1:0] inc_one;
    assign inc_one[`CNT_CYCLES] = running;
    assign inc_one[`CNT_LOAD_BUSY] = running && ld_busy;
    assign inc_one[`CNT_COMPUTE_BUSY] = running && cp_busy;
    assign inc_one[`CNT_STORE_BUSY] = running && st_busy;
    assign inc_one[`CNT_MAC_BUSY] = mac_step;
    assign inc_one[`CNT_MACS] = mac_step;
    assign inc_one[`CNT_DRAM_RD_BYTES] = r_load;
    assign inc_one[`CNT_DRAM_WR_BYTES] = st_beat;
    assign inc_one[`CNT_FETCH_BYTES] = r_fetch;
    assign inc_one[`CNT_INSNS] = go || (head_ok && opc == `OP_FINISH && all_idle && !finishing_end_only);
    assign inc_one[`CNT_HAZARD_STALLS] = head_ok && !go && opc != `OP_FINISH && opc != `OP_FENCE;
    assign inc_one[`CNT_FETCH_STALLS] = running && !fault_pending && !at_end && !head_valid;
    wire finishing_end_only = 1'b0;
    function [63:0] step_of(input integer idx);
        case (idx)
            `CNT_MACS: step_of = N * N;
            `CNT_DRAM_RD_BYTES, `CNT_DRAM_WR_BYTES, `CNT_FETCH_BYTES: step_of = 64'd8;
            default: step_of = 64'd1;
        endcase
    endfunction
    integer c;
    always @(posedge clk) begin
        for (c = 0; c < NC; c = c + 1)
            if (rst || start) counters[c] <= 64'd0;
            else if (inc_one[c]) counters[c] <= counters[c] + step_of(c);
    end

    // ------------------------------------------------------------ CSR reads
    /* verilator lint_off UNUSEDSIGNAL */
    wire [7:0] coff = csr_addr - `CSR_COUNTER_BASE;   // 8 bytes per counter: bits [2:0] pick the half
    /* verilator lint_on UNUSEDSIGNAL */
    wire [4:0] cidx = coff[7:3];
    always @(posedge clk) begin
        if (csr_valid && !csr_write) begin
            case (csr_addr)
                `CSR_STATUS:     csr_rdata <= ((running || st_flushing) ? 32'd1 << `STATUS_BUSY : 32'd0)
                                              | (done ? 32'd1 << `STATUS_DONE : 32'd0)
                                              | (error ? 32'd1 << `STATUS_ERROR : 32'd0);
                `CSR_ERROR_CODE: csr_rdata <= {28'd0, err_code};
                `CSR_ERROR_PC:   csr_rdata <= err_pc;
                `CSR_INSN_ADDR:  csr_rdata <= insn_addr;
                `CSR_INSN_COUNT: csr_rdata <= insn_count;
                default:
                    if (csr_addr >= `CSR_COUNTER_BASE && {27'd0, cidx} < NC)
                        csr_rdata <= csr_addr[2] ? counters[cidx[3:0]][63:32] : counters[cidx[3:0]][31:0];
                    else
                        csr_rdata <= 32'd0;
            endcase
        end
    end
    assign irq = done || error;
endmodule
`default_nettype wire

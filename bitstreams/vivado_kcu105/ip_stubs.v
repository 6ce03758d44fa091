// Black-box modules of the vendor IP and primitives kcu105_top.v uses, for linting the sources
// without Vivado (verilator --lint-only). Port lists follow the IP's generated stubs; Vivado
// builds with the real IP that create_project.tcl creates and never reads this file.
`default_nettype none

module IBUFDS (input wire I, input wire IB, output wire O);
    assign O = I & ~IB;
endmodule

module BUFG (input wire I, output wire O);
    assign O = I;
endmodule

module pcs_pma_sfp0 (
    input  wire refclk_p, input wire refclk_n, input wire dclk, input wire reset,
    input  wire sim_speedup_control,
    output wire coreclk_out, output wire rxrecclk_out, output wire resetdone_out,
    output wire qpll0lock_out, output wire qpll0outclk_out, output wire qpll0outrefclk_out,
    output wire txusrclk_out, output wire txusrclk2_out, output wire areset_datapathclk_out,
    output wire gttxreset_out, output wire gtrxreset_out, output wire txuserrdy_out,
    output wire reset_counter_done_out,
    input  wire [63:0] xgmii_txd, input wire [7:0] xgmii_txc,
    output wire [63:0] xgmii_rxd, output wire [7:0] xgmii_rxc,
    output wire txp, output wire txn, input wire rxp, input wire rxn,
    input  wire [535:0] configuration_vector, output wire [447:0] status_vector,
    output wire [7:0] core_status,
    input  wire signal_detect, input wire tx_fault, output wire tx_disable,
    input  wire [2:0] pma_pmd_type,
    output wire drp_req, input wire drp_gnt,
    output wire core_to_gt_drpen, output wire core_to_gt_drpwe,
    output wire [15:0] core_to_gt_drpaddr, output wire [15:0] core_to_gt_drpdi,
    output wire gt_drprdy, output wire [15:0] gt_drpdo,
    input  wire gt_drpen, input wire gt_drpwe, input wire [15:0] gt_drpaddr,
    input  wire [15:0] gt_drpdi,
    input  wire core_to_gt_drprdy, input wire [15:0] core_to_gt_drpdo
);
endmodule

module pcs_pma_sfp1 (
    input  wire dclk, input wire coreclk, input wire txusrclk, input wire txusrclk2,
    output wire txoutclk, output wire rxrecclk_out,
    input  wire areset, input wire areset_coreclk, input wire gttxreset, input wire gtrxreset,
    input  wire sim_speedup_control, input wire txuserrdy,
    input  wire qpll0lock, input wire qpll0outclk, input wire qpll0outrefclk,
    output wire qpll0reset, output wire reset_tx_bufg_gt, input wire reset_counter_done,
    input  wire [63:0] xgmii_txd, input wire [7:0] xgmii_txc,
    output wire [63:0] xgmii_rxd, output wire [7:0] xgmii_rxc,
    output wire txp, output wire txn, input wire rxp, input wire rxn,
    input  wire [535:0] configuration_vector, output wire [447:0] status_vector,
    output wire [7:0] core_status, output wire tx_resetdone, output wire rx_resetdone,
    input  wire signal_detect, input wire tx_fault, output wire tx_disable,
    input  wire [2:0] pma_pmd_type,
    output wire drp_req, input wire drp_gnt,
    output wire core_to_gt_drpen, output wire core_to_gt_drpwe,
    output wire [15:0] core_to_gt_drpaddr, output wire [15:0] core_to_gt_drpdi,
    output wire gt_drprdy, output wire [15:0] gt_drpdo,
    input  wire gt_drpen, input wire gt_drpwe, input wire [15:0] gt_drpaddr,
    input  wire [15:0] gt_drpdi,
    input  wire core_to_gt_drprdy, input wire [15:0] core_to_gt_drpdo
);
endmodule

`default_nettype wire

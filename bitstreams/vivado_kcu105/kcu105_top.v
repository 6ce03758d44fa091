// tickwire on the KCU105: two 10GBASE-R ports on SFP0 (feed) and SFP1 (orders, management).
// Written by tickwire.bitstreams.kcu105; the core (tickwire_core.v) is generated from Amaranth.
`default_nettype none

module kcu105_top (
    input  wire       clk125_p,       // 125 MHz system clock: the PCS/PMA's DRP / management clock
    input  wire       clk125_n,
    input  wire       sfp_refclk_p,   // 156.25 MHz GTH reference clock of quad 226
    input  wire       sfp_refclk_n,
    input  wire       cpu_reset,      // CPU_RESET push button, active high
    output wire       sfp0_txp,
    output wire       sfp0_txn,
    input  wire       sfp0_rxp,
    input  wire       sfp0_rxn,
    output wire       sfp0_tx_disable,
    output wire       sfp1_txp,
    output wire       sfp1_txn,
    input  wire       sfp1_rxp,
    input  wire       sfp1_rxn,
    output wire       sfp1_tx_disable,
    output wire [7:0] led
);
    wire clk125_ibuf, dclk;
    IBUFDS clk125_ibufds (.I(clk125_p), .IB(clk125_n), .O(clk125_ibuf));
    BUFG clk125_bufg (.I(clk125_ibuf), .O(dclk));

    // -- SFP0: PCS/PMA with the shared logic (QPLL, clocking, resets) inside ------------------
    wire        coreclk;                 // 156.25 MHz: the core clock of everything below
    wire        sfp0_resetdone;
    wire        qpll0lock, qpll0outclk, qpll0outrefclk;
    wire        txusrclk, txusrclk2, areset_coreclk, gttxreset, gtrxreset, txuserrdy;
    wire        reset_counter_done;
    wire [63:0] feed_rxd;
    wire [7:0]  feed_rxc;
    wire [7:0]  sfp0_core_status;
    wire [447:0] sfp0_status_vector;
    wire        sfp0_drp_req;
    wire        sfp0_drpen, sfp0_drpwe, sfp0_drprdy;
    wire [15:0] sfp0_drpaddr, sfp0_drpdi, sfp0_drpdo;

    pcs_pma_sfp0 sfp0 (
        .refclk_p(sfp_refclk_p), .refclk_n(sfp_refclk_n),
        .dclk(dclk), .reset(cpu_reset), .sim_speedup_control(1'b0),
        .coreclk_out(coreclk), .rxrecclk_out(),
        .resetdone_out(sfp0_resetdone),
        .qpll0lock_out(qpll0lock), .qpll0outclk_out(qpll0outclk),
        .qpll0outrefclk_out(qpll0outrefclk),
        .txusrclk_out(txusrclk), .txusrclk2_out(txusrclk2),
        .areset_datapathclk_out(areset_coreclk), .gttxreset_out(gttxreset),
        .gtrxreset_out(gtrxreset), .txuserrdy_out(txuserrdy),
        .reset_counter_done_out(reset_counter_done),
        .xgmii_txd(64'h0707070707070707), .xgmii_txc(8'hff),   // the feed port only receives
        .xgmii_rxd(feed_rxd), .xgmii_rxc(feed_rxc),
        .txp(sfp0_txp), .txn(sfp0_txn), .rxp(sfp0_rxp), .rxn(sfp0_rxn),
        .configuration_vector(536'd0), .status_vector(sfp0_status_vector),
        .core_status(sfp0_core_status),
        .signal_detect(1'b1), .tx_fault(1'b0), .tx_disable(sfp0_tx_disable),
        .pma_pmd_type(3'b111),   // 10GBASE-R
        // No DRP arbiter: the core's DRP requests go straight to the transceiver.
        .drp_req(sfp0_drp_req), .drp_gnt(sfp0_drp_req),
        .core_to_gt_drpen(sfp0_drpen), .core_to_gt_drpwe(sfp0_drpwe),
        .core_to_gt_drpaddr(sfp0_drpaddr), .core_to_gt_drpdi(sfp0_drpdi),
        .gt_drprdy(sfp0_drprdy), .gt_drpdo(sfp0_drpdo),
        .gt_drpen(sfp0_drpen), .gt_drpwe(sfp0_drpwe), .gt_drpaddr(sfp0_drpaddr),
        .gt_drpdi(sfp0_drpdi),
        .core_to_gt_drprdy(sfp0_drprdy), .core_to_gt_drpdo(sfp0_drpdo)
    );

    // -- SFP1: PCS/PMA on SFP0's QPLL and clocks ------------------------------------------------
    wire [63:0] order_txd, order_rxd;
    wire [7:0]  order_txc, order_rxc;
    wire [7:0]  sfp1_core_status;
    wire [447:0] sfp1_status_vector;
    wire        sfp1_tx_resetdone, sfp1_rx_resetdone;
    wire        sfp1_drp_req;
    wire        sfp1_drpen, sfp1_drpwe, sfp1_drprdy;
    wire [15:0] sfp1_drpaddr, sfp1_drpdi, sfp1_drpdo;

    pcs_pma_sfp1 sfp1 (
        .dclk(dclk), .coreclk(coreclk), .txusrclk(txusrclk), .txusrclk2(txusrclk2),
        .txoutclk(), .rxrecclk_out(),
        .areset(cpu_reset), .areset_coreclk(areset_coreclk), .gttxreset(gttxreset),
        .gtrxreset(gtrxreset), .sim_speedup_control(1'b0), .txuserrdy(txuserrdy),
        .qpll0lock(qpll0lock), .qpll0outclk(qpll0outclk), .qpll0outrefclk(qpll0outrefclk),
        .qpll0reset(), .reset_tx_bufg_gt(), .reset_counter_done(reset_counter_done),
        .xgmii_txd(order_txd), .xgmii_txc(order_txc),
        .xgmii_rxd(order_rxd), .xgmii_rxc(order_rxc),
        .txp(sfp1_txp), .txn(sfp1_txn), .rxp(sfp1_rxp), .rxn(sfp1_rxn),
        .configuration_vector(536'd0), .status_vector(sfp1_status_vector),
        .core_status(sfp1_core_status),
        .tx_resetdone(sfp1_tx_resetdone), .rx_resetdone(sfp1_rx_resetdone),
        .signal_detect(1'b1), .tx_fault(1'b0), .tx_disable(sfp1_tx_disable),
        .pma_pmd_type(3'b111),
        .drp_req(sfp1_drp_req), .drp_gnt(sfp1_drp_req),
        .core_to_gt_drpen(sfp1_drpen), .core_to_gt_drpwe(sfp1_drpwe),
        .core_to_gt_drpaddr(sfp1_drpaddr), .core_to_gt_drpdi(sfp1_drpdi),
        .gt_drprdy(sfp1_drprdy), .gt_drpdo(sfp1_drpdo),
        .gt_drpen(sfp1_drpen), .gt_drpwe(sfp1_drpwe), .gt_drpaddr(sfp1_drpaddr),
        .gt_drpdi(sfp1_drpdi),
        .core_to_gt_drprdy(sfp1_drprdy), .core_to_gt_drpdo(sfp1_drpdo)
    );

    // -- the core: held in reset until SFP0's PCS/PMA is out of reset --------------------------
    reg [1:0] core_reset_sync = 2'b11;
    always @(posedge coreclk or posedge areset_coreclk)
        if (areset_coreclk) core_reset_sync <= 2'b11;
        else core_reset_sync <= {core_reset_sync[0], ~sfp0_resetdone};

    tickwire_core core (
        .clk(coreclk), .rst(core_reset_sync[1]),
        .feed_rx__data(feed_rxd), .feed_rx__ctrl(feed_rxc),
        .order_rx__data(order_rxd), .order_rx__ctrl(order_rxc),
        .order_tx__data(order_txd), .order_tx__ctrl(order_txc)
    );

    // LEDs: block lock on SFP0 and SFP1 (core_status[0]), reset done, core out of reset.
    assign led = {4'b0, ~core_reset_sync[1], sfp0_resetdone, sfp1_core_status[0], sfp0_core_status[0]};
endmodule

`default_nettype wire

# tickwire on the KCU105 (XCKU040-2FFVA1156E). Pins from the KCU105 user guide (UG917).

# 125 MHz system clock: DRP / management clock of the PCS/PMA.
set_property PACKAGE_PIN G10 [get_ports clk125_p]
set_property PACKAGE_PIN F10 [get_ports clk125_n]
set_property IOSTANDARD LVDS [get_ports {clk125_p clk125_n}]
create_clock -name clk125 -period 8.000 [get_ports clk125_p]

# 156.25 MHz GTH reference clock for the SFP+ cages (quad 226).
set_property PACKAGE_PIN P6 [get_ports sfp_refclk_p]
set_property PACKAGE_PIN P5 [get_ports sfp_refclk_n]
create_clock -name sfp_refclk -period 6.400 [get_ports sfp_refclk_p]

# SFP+ cages: serial lanes (GTH quad 226, channels 2 and 1) and TX disable.
set_property PACKAGE_PIN U4 [get_ports sfp0_txp]
set_property PACKAGE_PIN U3 [get_ports sfp0_txn]
set_property PACKAGE_PIN T2 [get_ports sfp0_rxp]
set_property PACKAGE_PIN T1 [get_ports sfp0_rxn]
set_property PACKAGE_PIN W4 [get_ports sfp1_txp]
set_property PACKAGE_PIN W3 [get_ports sfp1_txn]
set_property PACKAGE_PIN V2 [get_ports sfp1_rxp]
set_property PACKAGE_PIN V1 [get_ports sfp1_rxn]
set_property PACKAGE_PIN AL8 [get_ports sfp0_tx_disable]
set_property PACKAGE_PIN D28 [get_ports sfp1_tx_disable]
set_property IOSTANDARD LVCMOS18 [get_ports sfp0_tx_disable]
set_property IOSTANDARD LVCMOS18 [get_ports sfp1_tx_disable]

# CPU_RESET button and the user LEDs (the same pins as amaranth-boards' KCU105Platform).
set_property PACKAGE_PIN AN8 [get_ports cpu_reset]
set_property IOSTANDARD LVCMOS18 [get_ports cpu_reset]
set_property PACKAGE_PIN AP8 [get_ports {led[0]}]
set_property PACKAGE_PIN H23 [get_ports {led[1]}]
set_property PACKAGE_PIN P20 [get_ports {led[2]}]
set_property PACKAGE_PIN P21 [get_ports {led[3]}]
set_property PACKAGE_PIN N22 [get_ports {led[4]}]
set_property PACKAGE_PIN M22 [get_ports {led[5]}]
set_property PACKAGE_PIN R23 [get_ports {led[6]}]
set_property PACKAGE_PIN P23 [get_ports {led[7]}]
set_property IOSTANDARD LVCMOS18 [get_ports {led[*]}]

# The button and the LEDs are asynchronous to every clock.
set_false_path -from [get_ports cpu_reset]
set_false_path -to [get_ports {led[*]}]
# clk125 (DRP) and the 156.25 MHz core clock are unrelated; the IP synchronizes between them.
set_clock_groups -asynchronous -group [get_clocks clk125] -group [get_clocks -include_generated_clocks sfp_refclk]

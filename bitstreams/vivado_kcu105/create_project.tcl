# Vivado batch script: vivado -mode batch -source create_project.tcl
# Creates the project in ./vivado, the two 10G Ethernet PCS/PMA IPs, builds the bitstream
# tickwire.bit and writes the timing and utilization reports next to it. Fails if timing is
# not met.

set here [file normalize [file dirname [info script]]]
set part xcku040-ffva1156-2-e
set jobs [expr {[info exists ::env(TICKWIRE_JOBS)] ? $::env(TICKWIRE_JOBS) : 2}]

create_project tickwire [file join $here vivado] -part $part -force
set_property board_part xilinx.com:kcu105:part0:1.7 [current_project]
set_property target_language Verilog [current_project]

add_files -norecurse [list [file join $here kcu105_top.v] [file join $here tickwire_core.v]]
add_files -fileset constrs_1 -norecurse [file join $here kcu105.xdc]
set_property top kcu105_top [current_fileset]

# 10G Ethernet PCS/PMA (10GBASE-R, BASE-R, 64-bit XGMII at 156.25 MHz), one per SFP+ cage.
proc tickwire_pcs_pma {name shared channel} {
    create_ip -name ten_gig_eth_pcs_pma -vendor xilinx.com -library ip -module_name $name
    set_property -dict [list \
        CONFIG.MGT_Type {GTH} \
        CONFIG.base_kr {BASE-R} \
        CONFIG.Management_Interface {false} \
        CONFIG.baser32 {64bit} \
        CONFIG.DClkRate {125.00} \
        CONFIG.RefClkRate {156.25} \
        CONFIG.SupportLevel $shared \
        CONFIG.Locations $channel \
    ] [get_ips $name]
    generate_target {synthesis implementation} [get_files $name.xci]
    create_ip_run [get_files $name.xci]
}
tickwire_pcs_pma pcs_pma_sfp0 1 {X0Y10}
tickwire_pcs_pma pcs_pma_sfp1 0 {X0Y9}

update_compile_order -fileset sources_1
launch_runs synth_1 -jobs $jobs
wait_on_run synth_1
if {[get_property PROGRESS [get_runs synth_1]] ne "100%"} {
    error "tickwire: synthesis failed, see [file join $here vivado]"
}
launch_runs impl_1 -to_step write_bitstream -jobs $jobs
wait_on_run impl_1
open_run impl_1
report_timing_summary -file [file join $here timing_summary.rpt]
report_utilization -file [file join $here utilization.rpt]
set wns [get_property STATS.WNS [get_runs impl_1]]
if {$wns < 0} {
    error "tickwire: timing not met: worst negative slack $wns ns (timing_summary.rpt)"
}
file copy -force [file join $here vivado tickwire.runs impl_1 kcu105_top.bit] [file join $here tickwire.bit]
puts "tickwire: wrote [file join $here tickwire.bit] (worst negative slack $wns ns)"

# A mock of the Vivado Tcl commands the `hwconv build` scripts use, for tests without Vivado.
#
# Every command checks its options (an unknown flag or a missing value is an error), the objects
# it is given (a pin, interface, segment or CONFIG parameter that the real IP does not have is an
# error) and records the call in ::mock::calls. The model of the IPs is small but independent of
# hwconv.vivado: interface and pin names, CONFIG names and what enables a port are written here from
# the IPs' documentation (PG082 processing_system7, PG201 zynq_ultra_ps_e, PG247 smartconnect,
# PG164 proc_sys_reset), and the engine's ports are read from the generated Verilog. At
# validate_bd_design the whole design is checked: every clock, reset, AXI port and the interrupt
# connected, one clock at the engine's frequency, the register window and DDR assigned.
#
# The test sets ::mock::expect(...) (part, board_part, vlnv, clock_mhz, hp_width, ps) before
# sourcing build.tcl, and may set ::mock::installed_board_parts, ::mock::wns and
# ::mock::auto_infer_signals.

namespace eval ipx {}
namespace eval mock {
    variable calls {}
    variable expect
    array set expect {}
    variable installed_board_parts {}
    variable wns 0.125
    variable auto_infer_signals 0
    variable state
    array set state {project "" board_part "" ip_repo_paths {} top "" bd "" wrapper "" synth 0 impl 0
                     generated 0 opened 0 files {} repo_paths {}}
    variable core
    array set core {}
    variable cells
    array set cells {}
    variable nets {}
    variable intf_nets {}
    variable assigned {}
    variable catalog {
        xilinx.com:ip:processing_system7:5.5
        xilinx.com:ip:zynq_ultra_ps_e:3.4
        xilinx.com:ip:zynq_ultra_ps_e:3.5
        xilinx.com:ip:smartconnect:1.0
        xilinx.com:ip:proc_sys_reset:5.0
        xilinx.com:ip:xlconcat:2.1
    }
}

proc mock::fail {message} { error "MOCK: $message" }
proc mock::record {args} { lappend ::mock::calls $args }

# Split args into options and positionals. valued: options that take a value; flags: those that do not.
proc mock::opts {cmd arglist valued {flags {}}} {
    set opts [dict create]
    set positional {}
    for {set i 0} {$i < [llength $arglist]} {incr i} {
        set a [lindex $arglist $i]
        if {[string match -* $a] && ![string is double -strict $a]} {
            if {$a in $valued} {
                incr i
                if {$i >= [llength $arglist]} { mock::fail "$cmd: option $a needs a value" }
                dict set opts $a [lindex $arglist $i]
            } elseif {$a in $flags} {
                dict set opts $a 1
            } else {
                mock::fail "$cmd: unknown option $a"
            }
        } else {
            lappend positional $a
        }
    }
    return [list $opts $positional]
}

proc mock::need {cmd opts names} {
    foreach n $names {
        if {![dict exists $opts $n]} { mock::fail "$cmd: missing required option $n" }
    }
}

# ---------------------------------------------------------------------------------------------
# Project, files, parameters
# ---------------------------------------------------------------------------------------------
proc version {args} { mock::record version {*}$args; return "2022.1" }
proc get_param {name} {
    if {$name ne "board.repoPaths"} { mock::fail "get_param: unknown parameter $name" }
    return $::mock::state(repo_paths)
}
proc set_param {name value} {
    mock::record set_param $name $value
    if {$name ne "board.repoPaths"} { mock::fail "set_param: unknown parameter $name" }
    set ::mock::state(repo_paths) $value
    foreach dir $value {
        if {[file exists [file join $dir board_part.txt]]} {
            lappend ::mock::installed_board_parts [string trim [mock::slurp [file join $dir board_part.txt]]]
        }
    }
}
proc mock::slurp {path} { set f [open $path]; set t [read $f]; close $f; return $t }
proc mock::spit {path text} { file mkdir [file dirname $path]; set f [open $path w]; puts -nonewline $f $text; close $f }

proc create_project {args} {
    lassign [mock::opts create_project $args {-part} {-force -in_memory}] opts pos
    mock::record create_project {*}$args
    mock::need create_project $opts {-part}
    if {[dict get $opts -part] ne $::mock::expect(part)} {
        mock::fail "create_project: part [dict get $opts -part], expected $::mock::expect(part)"
    }
    if {[llength $pos] != 2} { mock::fail "create_project: expected a name and a folder, got $pos" }
    lassign $pos name dir
    if {[file exists $dir] && ![dict exists $opts -force]} { mock::fail "create_project: $dir exists (no -force)" }
    file mkdir $dir
    set ::mock::state(project) $name
    set ::mock::state(project_dir) $dir
    set ::mock::state(files) {}
    set ::mock::state(top) ""
    set ::mock::state(board_part) ""
    return "project:$name"
}
proc current_project {} { return "project:$::mock::state(project)" }
proc current_fileset {} { return "fileset:sources_1" }
proc close_project {} { mock::record close_project; set ::mock::state(project) "" }
proc add_files {args} {
    lassign [mock::opts add_files $args {-fileset} {-norecurse}] opts pos
    mock::record add_files {*}$args
    foreach f $pos {
        if {![file exists $f]} { mock::fail "add_files: $f does not exist" }
        lappend ::mock::state(files) [file normalize $f]
    }
}
proc update_compile_order {args} {
    lassign [mock::opts update_compile_order $args {-fileset}] opts pos
    mock::need update_compile_order $opts {-fileset}
}
proc get_board_parts {args} {
    lassign [mock::opts get_board_parts $args {} {-quiet}] opts pos
    set found {}
    foreach p $::mock::installed_board_parts {
        if {[string match [lindex $pos 0] $p]} { lappend found $p }
    }
    return $found
}

# set_property NAME VALUE OBJECTS | set_property -dict LIST OBJECTS
proc set_property {args} {
    mock::record set_property {*}$args
    if {[lindex $args 0] eq "-dict"} {
        set pairs [lindex $args 1]
        set objects [lrange $args 2 end]
    } else {
        set pairs [list [lindex $args 0] [lindex $args 1]]
        set objects [lrange $args 2 end]
    }
    if {[llength $objects] == 0 || [lindex $objects 0] eq ""} { mock::fail "set_property $args: no object" }
    foreach obj $objects {
        foreach {name value} $pairs { mock::set_one $obj $name $value }
    }
}

proc mock::set_one {obj given value} {
    set name [string tolower $given]
    set kind [lindex [split $obj :] 0]
    set id [join [lrange [split $obj :] 1 end] :]
    switch -- $kind {
        project {
            switch -- $name {
                board_part {
                    if {$value ni $::mock::installed_board_parts} { mock::fail "board_part $value is not installed" }
                    if {$value ne $::mock::expect(board_part)} { mock::fail "board_part $value, expected $::mock::expect(board_part)" }
                    set ::mock::state(board_part) $value
                }
                ip_repo_paths { set ::mock::state(ip_repo_paths) $value }
                default { mock::fail "project has no property $name" }
            }
        }
        fileset {
            if {$name ne "top"} { mock::fail "fileset has no property $name" }
            set ::mock::state(top) $value
        }
        core {
            if {$name ni {vendor library name version display_name description}} { mock::fail "core has no property $name" }
            set ::mock::core($name) $value
        }
        bparam {
            if {$name ne "value"} { mock::fail "bus parameter has no property $name" }
            dict set ::mock::core(bifs) {*}[split $id /] $value
        }
        bif {
            switch -- $name {
                slave_memory_map_ref { dict set ::mock::core(refs) $id memory_map $value }
                master_address_space_ref { dict set ::mock::core(refs) $id address_space $value }
                default { mock::fail "bus interface has no settable property $name" }
            }
        }
        block {
            if {$name ni {range width usage}} { mock::fail "address block has no property $name" }
            dict set ::mock::core(blocks) $id $name $value
        }
        aspace {
            if {$name ni {range width}} { mock::fail "address space has no property $name" }
            dict set ::mock::core(spaces) $id $name $value
        }
        cell { mock::set_config $id $given $value }
        default { mock::fail "set_property on $obj" }
    }
}

# ---------------------------------------------------------------------------------------------
# IP packaging (ipx::)
# ---------------------------------------------------------------------------------------------
# Ports of the top module: {name {dir width}}
proc mock::verilog_ports {path top} {
    set text [mock::slurp $path]
    # Only the top module's declarations: the file holds its submodules too.
    set start [string first "module $top\(" $text]
    if {$start < 0} { mock::fail "no module $top in $path" }
    set text [string range $text $start [string first "\nendmodule" $text $start]]
    set ports [dict create]
    foreach {all dir range name} [regexp -all -inline -line {^\s*(input|output)\s+(\[\d+:0\]\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*;} $text] {
        set width 1
        if {[regexp {\[(\d+):0\]} $range -> msb]} { set width [expr {$msb + 1}] }
        dict set ports $name [list $dir $width]
    }
    return $ports
}

set mock::axi_signals {awaddr awprot awvalid awready wdata wstrb wvalid wready bresp bvalid bready
                       araddr arprot arvalid arready rdata rresp rvalid rready}
set mock::axi4_signals {awid awlen awsize awburst awlock awcache awqos wlast bid arid arlen arsize
                        arburst arlock arcache arqos rid rlast}

# What Vivado infers from <prefix>_<AXI signal> port groups: an AXI4 (or AXI4-Lite) interface.
proc mock::infer_axi {} {
    set groups [dict create]
    dict for {port info} $::mock::core(ports) {
        if {[regexp {^(.+)_([a-z]+)$} $port -> prefix signal] && $signal in [concat $::mock::axi_signals $::mock::axi4_signals]} {
            dict lappend groups $prefix $signal
        }
    }
    dict for {prefix signals} $groups {
        foreach s $::mock::axi_signals {
            if {$s ni $signals} { mock::fail "ports ${prefix}_*: no ${prefix}_$s, so no AXI interface" }
        }
        set mode [expr {[lindex [dict get $::mock::core(ports) ${prefix}_awaddr] 0] eq "input" ? "slave" : "master"}]
        set lite [expr {"awlen" ni $signals}]
        dict set ::mock::core(bifs) $prefix [dict create kind aximm mode $mode lite $lite]
    }
}

proc ipx::package_project {args} {
    lassign [mock::opts ipx::package_project $args {-root_dir -vendor -library -taxonomy -set_current} {-import_files}] opts pos
    mock::record ipx::package_project {*}$args
    mock::need ipx::package_project $opts {-root_dir -vendor -library}
    if {$::mock::state(top) eq ""} { mock::fail "ipx::package_project: no top set" }
    set source ""
    foreach f $::mock::state(files) {
        if {[file rootname [file tail $f]] eq $::mock::state(top)} { set source $f }
    }
    if {$source eq ""} { mock::fail "ipx::package_project: no source file for top $::mock::state(top)" }
    array unset ::mock::core
    array set ::mock::core [list ports [mock::verilog_ports $source $::mock::state(top)] bifs {} refs {} \
        maps {} blocks {} spaces {} root [dict get $opts -root_dir] vendor [dict get $opts -vendor] \
        library [dict get $opts -library] name $::mock::state(top) version 1.0 saved 0 checked 0]
    file mkdir [dict get $opts -root_dir]
    mock::infer_axi
    if {$::mock::auto_infer_signals} {
        foreach {port kind} {ap_clk clock ap_rst_n reset irq interrupt} {
            dict set ::mock::core(bifs) $port [dict create kind $kind]
        }
    }
}
proc ipx::current_core {} { return "core:engine" }

proc mock::bif_exists {name} { return [dict exists $::mock::core(bifs) $name] }
proc ipx::get_bus_interfaces {args} {
    lassign [mock::opts ipx::get_bus_interfaces $args {-of_objects} {-quiet}] opts pos
    set name [lindex $pos 0]
    if {[mock::bif_exists $name]} { return "bif:$name" }
    return ""
}
proc ipx::infer_bus_interface {port abstraction core} {
    mock::record ipx::infer_bus_interface $port $abstraction $core
    if {![dict exists $::mock::core(ports) $port]} { mock::fail "ipx::infer_bus_interface: no port $port" }
    lassign [dict get $::mock::core(ports) $port] dir width
    set kinds {xilinx.com:signal:clock_rtl:1.0 {clock input} xilinx.com:signal:reset_rtl:1.0 {reset input}
               xilinx.com:signal:interrupt_rtl:1.0 {interrupt output}}
    if {![dict exists $kinds $abstraction]} { mock::fail "ipx::infer_bus_interface: unknown abstraction $abstraction" }
    lassign [dict get $kinds $abstraction] kind want_dir
    if {$dir ne $want_dir || $width != 1} { mock::fail "$port ($dir, $width bits) cannot be a $kind interface" }
    if {[mock::bif_exists $port]} { mock::fail "ipx::infer_bus_interface: $port already is an interface" }
    dict set ::mock::core(bifs) $port [dict create kind $kind]
}
proc ipx::infer_bus_interfaces {definition core} {
    mock::record ipx::infer_bus_interfaces $definition $core
    if {$definition ne "xilinx.com:interface:aximm_rtl:1.0"} { mock::fail "ipx::infer_bus_interfaces: unknown $definition" }
    mock::infer_axi
}
proc ipx::get_bus_parameters {args} {
    lassign [mock::opts ipx::get_bus_parameters $args {-of_objects} {-quiet}] opts pos
    set bif [string range [dict get $opts -of_objects] 4 end]
    set name [lindex $pos 0]
    if {[dict exists $::mock::core(bifs) $bif params $name]} { return "bparam:$bif/params/$name" }
    return ""
}
proc ipx::add_bus_parameter {name bif} {
    set id [string range $bif 4 end]
    if {![mock::bif_exists $id]} { mock::fail "ipx::add_bus_parameter: no interface $id" }
    dict set ::mock::core(bifs) $id params $name ""
    return "bparam:$id/params/$name"
}
proc get_property {name obj} {
    set kind [lindex [split $obj :] 0]
    set id [join [lrange [split $obj :] 1 end] :]
    set lname [string tolower $name]
    switch -- $kind {
        bif {
            if {$lname ne "interface_mode"} { mock::fail "get_property $name of an interface" }
            set b [dict get $::mock::core(bifs) $id]
            return [expr {[dict exists $b mode] ? [dict get $b mode] : "slave"}]
        }
        ipdef {
            if {$lname ne "vlnv"} { mock::fail "get_property $name of an ipdef" }
            return $id
        }
        cell { return [mock::get_config $id $name] }
        run { return [mock::run_property $id $lname] }
        default { mock::fail "get_property $name of $obj" }
    }
}
proc ipx::get_memory_maps {args} {
    lassign [mock::opts ipx::get_memory_maps $args {-of_objects} {-quiet}] opts pos
    if {[dict exists $::mock::core(maps) [lindex $pos 0]]} { return "mmap:[lindex $pos 0]" }
    return ""
}
proc ipx::add_memory_map {name core} { dict set ::mock::core(maps) $name 1; return "mmap:$name" }
proc ipx::get_address_blocks {args} {
    lassign [mock::opts ipx::get_address_blocks $args {-of_objects} {-quiet}] opts pos
    set id "[string range [dict get $opts -of_objects] 5 end]/[lindex $pos 0]"
    if {[dict exists $::mock::core(blocks) $id]} { return "block:$id" }
    return ""
}
proc ipx::add_address_block {name map} {
    set id "[string range $map 5 end]/$name"
    dict set ::mock::core(blocks) $id {}
    return "block:$id"
}
proc ipx::get_address_spaces {args} {
    lassign [mock::opts ipx::get_address_spaces $args {-of_objects} {-quiet}] opts pos
    if {[dict exists $::mock::core(spaces) [lindex $pos 0]]} { return "aspace:[lindex $pos 0]" }
    return ""
}
proc ipx::add_address_space {name core} { dict set ::mock::core(spaces) $name {}; return "aspace:$name" }
proc ipx::create_xgui_files {core} { mock::record ipx::create_xgui_files }
proc ipx::update_checksums {core} { mock::record ipx::update_checksums }

# What Vivado's integrity check and IP integrator need from the packaged engine.
proc ipx::check_integrity {core} {
    mock::record ipx::check_integrity
    set bifs $::mock::core(bifs)
    foreach {name kind} {ap_clk clock ap_rst_n reset irq interrupt s_axi_control aximm m_axi_gmem aximm} {
        if {![dict exists $bifs $name]} { mock::fail "packaged IP has no interface $name" }
        if {[dict get $bifs $name kind] ne $kind} { mock::fail "$name is a [dict get $bifs $name kind] interface, not $kind" }
    }
    foreach {bif param value} {ap_clk ASSOCIATED_BUSIF s_axi_control:m_axi_gmem ap_clk ASSOCIATED_RESET ap_rst_n
                               ap_rst_n POLARITY ACTIVE_LOW irq SENSITIVITY LEVEL_HIGH} {
        if {![dict exists $bifs $bif params $param] || [dict get $bifs $bif params $param] ne $value} {
            mock::fail "interface $bif: $param must be $value"
        }
    }
    if {[dict get $bifs s_axi_control mode] ne "slave" || ![dict get $bifs s_axi_control lite]} {
        mock::fail "s_axi_control must be an AXI4-Lite slave"
    }
    if {[dict get $bifs m_axi_gmem mode] ne "master" || [dict get $bifs m_axi_gmem lite]} {
        mock::fail "m_axi_gmem must be an AXI4 master"
    }
    if {![dict exists $::mock::core(refs) s_axi_control memory_map]} { mock::fail "s_axi_control has no memory map" }
    set map [dict get $::mock::core(refs) s_axi_control memory_map]
    if {![dict exists $::mock::core(blocks) $map/reg0 range]} { mock::fail "memory map $map has no address block reg0 with a range" }
    set range [dict get $::mock::core(blocks) $map/reg0 range]
    if {$range < 4096 || $range & ($range - 1)} { mock::fail "register window $range is not a power of two >= 4K" }
    if {![dict exists $::mock::core(refs) m_axi_gmem address_space]} { mock::fail "m_axi_gmem has no address space" }
    set space [dict get $::mock::core(refs) m_axi_gmem address_space]
    foreach p {range width} {
        if {![dict exists $::mock::core(spaces) $space $p]} { mock::fail "address space $space has no $p" }
    }
    set rdata [lindex [dict get $::mock::core(ports) m_axi_gmem_rdata] 1]
    if {[dict get $::mock::core(spaces) $space width] != $rdata} { mock::fail "address space width differs from m_axi_gmem_rdata ($rdata bits)" }
    set ::mock::core(checked) 1
}
proc ipx::save_core {core} {
    mock::record ipx::save_core
    if {!$::mock::core(checked)} { mock::fail "ipx::save_core before ipx::check_integrity" }
    set vlnv "$::mock::core(vendor):$::mock::core(library):$::mock::core(name):$::mock::core(version)"
    set ::mock::core(vlnv) $vlnv
    mock::spit [file join $::mock::core(root) component.xml] "<component vlnv=\"$vlnv\"/>\n"
}

# ---------------------------------------------------------------------------------------------
# IP catalog
# ---------------------------------------------------------------------------------------------
proc update_ip_catalog {args} {
    lassign [mock::opts update_ip_catalog $args {} {-rebuild}] opts pos
    mock::record update_ip_catalog {*}$args
    foreach dir $::mock::state(ip_repo_paths) {
        set xml [file join $dir component.xml]
        if {[file exists $xml] && [regexp {vlnv="([^"]+)"} [mock::slurp $xml] -> vlnv]} {
            lappend ::mock::catalog $vlnv
        }
    }
}
proc get_ipdefs {args} {
    lassign [mock::opts get_ipdefs $args {-filter} {-quiet -all}] opts pos
    set found {}
    foreach v $::mock::catalog {
        if {[string match [lindex $pos 0] $v]} { lappend found "ipdef:$v" }
    }
    return $found
}

# ---------------------------------------------------------------------------------------------
# Block design: the IPs' pins, what enables them, their CONFIG parameters
# ---------------------------------------------------------------------------------------------
# pin -> {type direction enabling-CONFIG}; types: clk rst intr net, or aximm (intf).
proc mock::ip_model {ip} {
    switch -- $ip {
        processing_system7 {
            return {
                pins {
                    FCLK_CLK0 {clk out {PCW_EN_CLK0_PORT 1}} FCLK_RESET0_N {rst out {PCW_EN_RST0_PORT 1}}
                    FCLK_CLK1 {clk out {PCW_EN_CLK1_PORT 1}} FCLK_RESET1_N {rst out {PCW_EN_RST1_PORT 1}}
                    M_AXI_GP0_ACLK {clk in {PCW_USE_M_AXI_GP0 1}} S_AXI_HP0_ACLK {clk in {PCW_USE_S_AXI_HP0 1}}
                    IRQ_F2P {intr in {PCW_USE_FABRIC_INTERRUPT 1 PCW_IRQ_F2P_INTR 1}}
                }
                intf {
                    M_AXI_GP0 {master {PCW_USE_M_AXI_GP0 1} M_AXI_GP0_ACLK}
                    S_AXI_HP0 {slave {PCW_USE_S_AXI_HP0 1} S_AXI_HP0_ACLK}
                }
                segments {S_AXI_HP0/HP0_DDR_LOWOCM {0x0 32}}
                space Data
                window {M_AXI_GP0 {0x40000000 0x80000000}}
                config {PCW_USE_M_AXI_GP0 0 PCW_USE_S_AXI_HP0 0 PCW_S_AXI_HP0_DATA_WIDTH 64 PCW_FPGA_FCLK0_ENABLE 1
                        PCW_FPGA_FCLK1_ENABLE 0 PCW_EN_CLK0_PORT 1 PCW_EN_RST0_PORT 1 PCW_EN_CLK1_PORT 0
                        PCW_EN_RST1_PORT 0 PCW_FPGA0_PERIPHERAL_FREQMHZ 50 PCW_FPGA1_PERIPHERAL_FREQMHZ 50
                        PCW_USE_FABRIC_INTERRUPT 0 PCW_IRQ_F2P_INTR 0}
                widths {PCW_S_AXI_HP0_DATA_WIDTH {32 64}}
                clock_config {FCLK_CLK0 PCW_FPGA0_PERIPHERAL_FREQMHZ FCLK_CLK1 PCW_FPGA1_PERIPHERAL_FREQMHZ}
                actual {PCW_ACT_FPGA0_PERIPHERAL_FREQMHZ PCW_FPGA0_PERIPHERAL_FREQMHZ
                        PCW_ACT_FPGA1_PERIPHERAL_FREQMHZ PCW_FPGA1_PERIPHERAL_FREQMHZ}
                hp_width PCW_S_AXI_HP0_DATA_WIDTH
                rule xilinx.com:bd_rule:processing_system7
            }
        }
        zynq_ultra_ps_e {
            return {
                pins {
                    pl_clk0 {clk out {PSU__FPGA_PL0_ENABLE 1}} pl_resetn0 {rst out {PSU__FPGA_PL0_ENABLE 1}}
                    pl_clk1 {clk out {PSU__FPGA_PL1_ENABLE 1}} pl_resetn1 {rst out {PSU__FPGA_PL1_ENABLE 1}}
                    maxihpm0_fpd_aclk {clk in {PSU__USE__M_AXI_GP0 1}} maxihpm1_fpd_aclk {clk in {PSU__USE__M_AXI_GP1 1}}
                    maxihpm0_lpd_aclk {clk in {PSU__USE__M_AXI_GP2 1}} saxihp0_fpd_aclk {clk in {PSU__USE__S_AXI_GP2 1}}
                    pl_ps_irq0 {intr in {PSU__USE__IRQ0 1}}
                }
                intf {
                    M_AXI_HPM0_FPD {master {PSU__USE__M_AXI_GP0 1} maxihpm0_fpd_aclk}
                    M_AXI_HPM1_FPD {master {PSU__USE__M_AXI_GP1 1} maxihpm1_fpd_aclk}
                    M_AXI_HPM0_LPD {master {PSU__USE__M_AXI_GP2 1} maxihpm0_lpd_aclk}
                    S_AXI_HP0_FPD {slave {PSU__USE__S_AXI_GP2 1} saxihp0_fpd_aclk}
                }
                segments {SAXIGP2/HP0_DDR_LOW {0x0 32} SAXIGP2/HP0_DDR_HIGH {0x800000000 36}
                          SAXIGP2/HP0_LPS_OCM {0xFF000000 32}}
                space Data
                window {M_AXI_HPM0_FPD {0xA0000000 0xB0000000} M_AXI_HPM0_LPD {0x80000000 0xA0000000}}
                config {PSU__USE__M_AXI_GP0 1 PSU__USE__M_AXI_GP1 1 PSU__USE__M_AXI_GP2 0 PSU__USE__S_AXI_GP2 0
                        PSU__MAXIGP0__DATA_WIDTH 128 PSU__SAXIGP2__DATA_WIDTH 128 PSU__FPGA_PL0_ENABLE 1
                        PSU__FPGA_PL1_ENABLE 0 PSU__OVERRIDE__BASIC_CLOCK 1 PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ 100
                        PSU__CRL_APB__PL1_REF_CTRL__FREQMHZ 100 PSU__USE__IRQ0 1}
                widths {PSU__SAXIGP2__DATA_WIDTH {32 64 128} PSU__MAXIGP0__DATA_WIDTH {32 64 128}}
                clock_config {pl_clk0 PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ pl_clk1 PSU__CRL_APB__PL1_REF_CTRL__FREQMHZ}
                actual {PSU__CRL_APB__PL0_REF_CTRL__ACT_FREQMHZ PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ
                        PSU__CRL_APB__PL1_REF_CTRL__ACT_FREQMHZ PSU__CRL_APB__PL1_REF_CTRL__FREQMHZ}
                hp_width PSU__SAXIGP2__DATA_WIDTH
                rule xilinx.com:bd_rule:zynq_ultra_ps_e
            }
        }
        smartconnect {
            return {
                pins {aclk {clk in {}} aresetn {rst in {}}}
                intf {S00_AXI {slave {} aclk} M00_AXI {master {} aclk}}
                config {NUM_SI 1 NUM_MI 2}
            }
        }
        proc_sys_reset {
            return {
                pins {slowest_sync_clk {clk in {}} ext_reset_in {rst in {}} aux_reset_in {rst in {}}
                      dcm_locked {net in {}} peripheral_aresetn {rst out {}} interconnect_aresetn {rst out {}}
                      peripheral_reset {rst out {}} mb_reset {rst out {}}}
                intf {}
                required {slowest_sync_clk ext_reset_in}
                config {C_EXT_RST_WIDTH 4 C_AUX_RST_WIDTH 4}
            }
        }
        engine {
            return {
                pins {ap_clk {clk in {}} ap_rst_n {rst in {}} irq {intr out {}}}
                intf {s_axi_control {slave {} ap_clk} m_axi_gmem {master {} ap_clk}}
                config {}
            }
        }
        default { mock::fail "no model of IP $ip" }
    }
}

proc create_bd_design {name} { mock::record create_bd_design $name; set ::mock::state(bd) $name }
proc create_bd_cell {args} {
    lassign [mock::opts create_bd_cell $args {-type -vlnv}] opts pos
    mock::record create_bd_cell {*}$args
    mock::need create_bd_cell $opts {-type -vlnv}
    if {$::mock::state(bd) eq ""} { mock::fail "create_bd_cell before create_bd_design" }
    set vlnv [dict get $opts -vlnv]
    if {$vlnv ni $::mock::catalog} { mock::fail "create_bd_cell: $vlnv is not in the IP catalog" }
    set name [lindex $pos 0]
    if {[info exists ::mock::cells($name)]} { mock::fail "create_bd_cell: cell $name exists" }
    set ip [lindex [split $vlnv :] 2]
    if {$vlnv eq $::mock::expect(vlnv)} { set ip engine }
    set model [mock::ip_model $ip]
    set ::mock::cells($name) [dict create ip $ip vlnv $vlnv model $model config [dict get $model config] preset 0]
    return "cell:$name"
}
proc get_bd_cells {name} {
    set name [string trimleft $name /]
    if {![info exists ::mock::cells($name)]} { return "" }
    return "cell:$name"
}
proc mock::cell_of {obj} {
    set name [string range $obj 5 end]
    if {![info exists ::mock::cells($name)]} { mock::fail "no cell $obj" }
    return $name
}
proc mock::set_config {cell name value} {
    if {![string match -nocase config.* $name]} { mock::fail "cell $cell has no property $name" }
    set key [string range $name 7 end]
    set config [dict get $::mock::cells($cell) config]
    set match ""
    foreach k [dict keys $config] {
        if {[string equal -nocase $k $key]} { set match $k }
    }
    if {$match eq ""} { mock::fail "[dict get $::mock::cells($cell) ip] has no parameter CONFIG.$key" }
    set model [dict get $::mock::cells($cell) model]
    if {[dict exists $model widths $match] && $value ni [dict get $model widths $match]} {
        mock::fail "CONFIG.$match = $value is not one of [dict get $model widths $match]"
    }
    dict set ::mock::cells($cell) config $match $value
}
proc mock::get_config {cell name} {
    set key [string range $name 7 end]
    set model [dict get $::mock::cells($cell) model]
    if {[dict exists $model actual $key]} { set key [dict get $model actual $key] }
    set config [dict get $::mock::cells($cell) config]
    if {![dict exists $config $key]} { mock::fail "[dict get $::mock::cells($cell) ip] has no parameter $name" }
    return [dict get $config $key]
}
proc apply_bd_automation {args} {
    lassign [mock::opts apply_bd_automation $args {-rule -config -dict}] opts pos
    mock::record apply_bd_automation {*}$args
    mock::need apply_bd_automation $opts {-rule -config}
    set cell [mock::cell_of [lindex $pos 0]]
    set model [dict get $::mock::cells($cell) model]
    if {![dict exists $model rule] || [dict get $opts -rule] ne [dict get $model rule]} {
        mock::fail "apply_bd_automation: rule [dict get $opts -rule] does not apply to [dict get $::mock::cells($cell) ip]"
    }
    set config [dict get $opts -config]
    if {![dict exists $config apply_board_preset] || [dict get $config apply_board_preset] ne "1"} {
        mock::fail "apply_bd_automation: the PS needs apply_board_preset 1 (DDR and MIO come from the board)"
    }
    if {$::mock::state(board_part) eq ""} { mock::fail "apply_bd_automation: no board part set on the project" }
    if {[dict get $::mock::cells($cell) ip] eq "processing_system7"} {
        if {![dict exists $config make_external] || [dict get $config make_external] ne "FIXED_IO, DDR"} {
            mock::fail "processing_system7 automation must make DDR and FIXED_IO external"
        }
    }
    dict set ::mock::cells($cell) preset 1
}

proc mock::pin {path intf} {
    set path [string trimleft $path /]
    lassign [split $path /] cell pin
    if {![info exists ::mock::cells($cell)]} { mock::fail "no cell $cell (pin $path)" }
    set model [dict get $::mock::cells($cell) model]
    set table [expr {$intf ? "intf" : "pins"}]
    if {![dict exists $model $table $pin]} {
        mock::fail "[dict get $::mock::cells($cell) ip] has no [expr {$intf ? {interface pin} : {pin}}] $pin"
    }
    set enable [lindex [dict get $model $table $pin] [expr {$intf ? 1 : 2}]]
    foreach {k v} $enable {
        if {[dict get $::mock::cells($cell) config $k] ne $v} {
            mock::fail "$cell/$pin does not exist unless CONFIG.$k is $v"
        }
    }
    return "$cell/$pin"
}
proc get_bd_pins {path} { return "pin:[mock::pin $path 0]" }
proc get_bd_intf_pins {path} { return "ipin:[mock::pin $path 1]" }

proc connect_bd_net {args} {
    mock::record connect_bd_net {*}$args
    if {[llength $args] < 2} { mock::fail "connect_bd_net needs two pins or more" }
    set pins {}
    set drivers 0
    foreach p $args {
        if {![string match pin:* $p]} { mock::fail "connect_bd_net: $p is not a pin" }
        set id [string range $p 4 end]
        foreach net $::mock::nets {
            if {$id in $net} { mock::fail "connect_bd_net: $id is already connected" }
        }
        lassign [split $id /] cell pin
        if {[lindex [dict get $::mock::cells($cell) model pins $pin] 1] eq "out"} { incr drivers }
        lappend pins $id
    }
    if {$drivers != 1} { mock::fail "connect_bd_net: $drivers drivers on one net ($pins)" }
    set types {}
    foreach id $pins {
        lassign [split $id /] cell pin
        lappend types [lindex [dict get $::mock::cells($cell) model pins $pin] 0]
    }
    if {[llength [lsort -unique $types]] != 1} { mock::fail "connect_bd_net: mixes pin types $types ($pins)" }
    lappend ::mock::nets $pins
}
proc connect_bd_intf_net {args} {
    lassign [mock::opts connect_bd_intf_net $args {-boundary_type}] opts pos
    mock::record connect_bd_intf_net {*}$args
    if {[llength $pos] != 2} { mock::fail "connect_bd_intf_net needs two interface pins" }
    set modes {}
    foreach p $pos {
        if {![string match ipin:* $p]} { mock::fail "connect_bd_intf_net: $p is not an interface pin" }
        set id [string range $p 5 end]
        foreach net $::mock::intf_nets {
            if {$id in $net} { mock::fail "connect_bd_intf_net: $id is already connected" }
        }
        lassign [split $id /] cell pin
        lappend modes [lindex [dict get $::mock::cells($cell) model intf $pin] 0]
    }
    if {[lsort $modes] ne {master slave}} { mock::fail "connect_bd_intf_net: connects $modes ($pos)" }
    set ids [list [string range [lindex $pos 0] 5 end] [string range [lindex $pos 1] 5 end]]
    if {[lindex $modes 0] eq "slave"} { set ids [lreverse $ids] }
    lappend ::mock::intf_nets $ids
}

# Address spaces and segments
proc get_bd_addr_spaces {path} {
    set path [string trimleft $path /]
    lassign [split $path /] cell space
    if {![info exists ::mock::cells($cell)]} { return "" }
    set model [dict get $::mock::cells($cell) model]
    if {[dict get $::mock::cells($cell) ip] eq "engine" && $space eq "m_axi_gmem"} { return "space:$path" }
    if {[dict exists $model space] && [dict get $model space] eq $space} { return "space:$path" }
    return ""
}
proc get_bd_addr_segs {args} {
    lassign [mock::opts get_bd_addr_segs $args {} {-quiet}] opts pos
    set path [string trimleft [lindex $pos 0] /]
    set parts [split $path /]
    set cell [lindex $parts 0]
    set rest [join [lrange $parts 1 end] /]
    if {![info exists ::mock::cells($cell)]} { return "" }
    set model [dict get $::mock::cells($cell) model]
    if {[dict get $::mock::cells($cell) ip] eq "engine"} {
        # <cell>/<interface>/<address block> of the packaged IP's memory map
        if {[dict exists $::mock::core(blocks) $rest]} { return "seg:$path" }
        return ""
    }
    if {![dict exists $model segments $rest]} { return "" }
    # A segment exists only while the port it belongs to is enabled.
    set port [expr {[dict get $::mock::cells($cell) ip] eq "processing_system7" ? "S_AXI_HP0" : "S_AXI_HP0_FPD"}]
    foreach {k v} [lindex [dict get $model intf $port] 1] {
        if {[dict get $::mock::cells($cell) config $k] ne $v} { return "" }
    }
    return "seg:$path"
}

# Follow interface nets from a master through SmartConnects: the subordinate pins reached.
proc mock::reach {start} {
    set reached {}
    set frontier [list $start]
    while {[llength $frontier]} {
        set m [lindex $frontier 0]
        set frontier [lrange $frontier 1 end]
        foreach net $::mock::intf_nets {
            if {[lindex $net 0] ne $m} continue
            set s [lindex $net 1]
            lappend reached $s
            lassign [split $s /] cell pin
            if {[dict get $::mock::cells($cell) ip] eq "smartconnect"} { lappend frontier "$cell/M00_AXI" }
        }
    }
    return $reached
}

proc assign_bd_address {args} {
    lassign [mock::opts assign_bd_address $args {-target_address_space -offset -range} {-force -quiet}] opts pos
    mock::record assign_bd_address {*}$args
    mock::need assign_bd_address $opts {-target_address_space}
    set space [dict get $opts -target_address_space]
    set seg [lindex $pos 0]
    if {$space eq "" || ![string match space:* $space]} { mock::fail "assign_bd_address: no address space" }
    if {$seg eq "" || ![string match seg:* $seg]} { mock::fail "assign_bd_address: no segment" }
    lassign [split [string range $space 6 end] /] master_cell master_space
    set seg_path [string range $seg 4 end]
    set seg_cell [lindex [split $seg_path /] 0]
    set seg_ip [dict get $::mock::cells($seg_cell) ip]
    if {[dict get $::mock::cells($master_cell) ip] eq "engine"} {
        set masters [list $master_cell/m_axi_gmem]
    } else {
        set masters {}
        dict for {pin info} [dict get $::mock::cells($master_cell) model intf] {
            if {[lindex $info 0] eq "master"} { lappend masters $master_cell/$pin }
        }
    }
    # Which subordinate interface serves the segment, and is it reachable from the space's masters?
    if {$seg_ip eq "engine"} {
        set target $seg_cell/s_axi_control
    } else {
        set target "$seg_cell/[expr {$seg_ip eq "processing_system7" ? "S_AXI_HP0" : "S_AXI_HP0_FPD"}]"
    }
    set via ""
    foreach m $masters {
        if {[catch {mock::pin $m 1}]} continue
        if {$target in [mock::reach $m]} { set via $m }
    }
    if {$via eq ""} { mock::fail "assign_bd_address: $seg_path is not reachable from $space" }
    if {$seg_ip eq "engine"} {
        mock::need assign_bd_address $opts {-offset -range}
        set offset [expr {[dict get $opts -offset]}]
        set range [mock::bytes [dict get $opts -range]]
        lassign [dict get $::mock::cells($master_cell) model window [lindex [split $via /] 1]] lo hi
        set block [dict get $::mock::core(blocks) s_axi_control/reg0 range]
        if {$range < $block} { mock::fail "window $range is smaller than the IP's register block $block" }
        if {$range & ($range - 1) || $range < 4096 || $offset % $range} { mock::fail "window $offset/$range is not aligned" }
        if {$offset < $lo || $offset + $range > $hi} { mock::fail "window [format 0x%X $offset] is outside [lindex [split $via /] 1]" }
        lappend ::mock::assigned [list control $seg_path $offset $range]
    } else {
        set rest [join [lrange [split $seg_path /] 1 end] /]
        lassign [dict get $::mock::cells($seg_cell) model segments $rest] base bits
        set width [lindex [dict get $::mock::core(ports) m_axi_gmem_araddr] 1]
        if {$bits > $width} { mock::fail "assign_bd_address: $rest needs $bits address bits, m_axi_gmem has $width" }
        lappend ::mock::assigned [list memory $seg_path $base]
    }
}
proc mock::bytes {text} {
    if {[regexp {^(\d+)([KMGTPE])$} $text -> n unit]} {
        return [expr {$n << (10 * [string first $unit " KMGTPE"]) }]
    }
    return [expr {$text}]
}

# The checks IP integrator's validation makes, as far as this design needs them.
proc validate_bd_design {args} {
    mock::record validate_bd_design {*}$args
    set net_of [dict create]
    foreach net $::mock::nets {
        foreach pin $net { dict set net_of $pin $net }
    }
    set intf_connected {}
    set clock_nets {}
    foreach net $::mock::intf_nets { lappend intf_connected {*}$net }
    foreach cell [array names ::mock::cells] {
        set model [dict get $::mock::cells($cell) model]
        if {[dict exists $model rule] && ![dict get $::mock::cells($cell) preset]} {
            mock::fail "$cell: the PS has no board preset applied"
        }
        dict for {pin info} [dict get $model pins] {
            lassign $info type dir enable
            set enabled 1
            foreach {k v} $enable { if {[dict get $::mock::cells($cell) config $k] ne $v} { set enabled 0 } }
            set required [expr {$dir eq "in" && $type in {clk rst intr}}]
            if {[dict exists $model required]} { set required [expr {$pin in [dict get $model required]}] }
            if {$enabled && $required && ![dict exists $net_of $cell/$pin]} { mock::fail "$cell/$pin is not connected" }
        }
        dict for {pin info} [dict get $model intf] {
            set enabled 1
            foreach {k v} [lindex $info 1] { if {[dict get $::mock::cells($cell) config $k] ne $v} { set enabled 0 } }
            if {$enabled && "$cell/$pin" ni $intf_connected} { mock::fail "$cell/$pin (AXI) is not connected" }
            # Its clock must be connected, to the same net as every other AXI clock.
            if {$enabled} {
                set clk $cell/[lindex $info 2]
                if {![dict exists $net_of $clk]} { mock::fail "$clk (clock of $cell/$pin) is not connected" }
                lappend clock_nets [dict get $net_of $clk]
            }
        }
    }
    if {[llength [lsort -unique $clock_nets]] != 1} { mock::fail "AXI interfaces are on [llength [lsort -unique $clock_nets]] clocks" }
    # The one clock comes from the PS at the engine's frequency.
    set net [lindex $clock_nets 0]
    set source ""
    foreach pin $net {
        lassign [split $pin /] cell p
        if {[lindex [dict get $::mock::cells($cell) model pins $p] 1] eq "out"} { set source $pin }
    }
    lassign [split $source /] ps clock_pin
    set model [dict get $::mock::cells($ps) model]
    if {![dict exists $model clock_config $clock_pin]} { mock::fail "the clock comes from $source, not a PS fabric clock" }
    set mhz [dict get $::mock::cells($ps) config [dict get $model clock_config $clock_pin]]
    if {abs($mhz - $::mock::expect(clock_mhz)) > 1e-6} { mock::fail "$source runs at $mhz MHz, the engine wants $::mock::expect(clock_mhz)" }
    set hp [dict get $::mock::cells($ps) config [dict get $model hp_width]]
    if {$hp != $::mock::expect(hp_width)} { mock::fail "HP port is $hp bits, the board's is $::mock::expect(hp_width)" }
    if {[dict get $::mock::cells($ps) ip] ne $::mock::expect(ps)} { mock::fail "the PS is [dict get $::mock::cells($ps) ip], expected $::mock::expect(ps)" }
    # Resets: the engine's comes from proc_sys_reset's peripheral reset, which the PS reset drives.
    set engine ""
    foreach cell [array names ::mock::cells] { if {[dict get $::mock::cells($cell) ip] eq "engine"} { set engine $cell } }
    if {$engine eq ""} { mock::fail "no engine cell" }
    if {[dict get $::mock::cells($engine) vlnv] ne $::mock::expect(vlnv)} { mock::fail "engine VLNV" }
    set rst_net [dict get $net_of $engine/ap_rst_n]
    if {[lsearch -glob $rst_net */peripheral_aresetn] < 0} { mock::fail "engine reset is not from a proc_sys_reset" }
    # The interrupt lands on the PS.
    set irq_net [dict get $net_of $engine/irq]
    set irq_pin [expr {$::mock::expect(ps) eq "processing_system7" ? "$ps/IRQ_F2P" : "$ps/pl_ps_irq0"}]
    if {$irq_pin ni $irq_net} { mock::fail "engine irq does not reach $irq_pin" }
    # Addresses: the register window for the PS, DDR low for the engine.
    set kinds {}
    foreach a $::mock::assigned { lappend kinds [lindex $a 0] }
    if {"control" ni $kinds} { mock::fail "the engine's register window is not assigned" }
    if {"memory" ni $kinds} { mock::fail "the engine reaches no DDR" }
    set ::mock::state(validated) 1
}
proc save_bd_design {args} { mock::record save_bd_design }
proc get_files {args} {
    lassign [mock::opts get_files $args {-of_objects} {-all -quiet}] opts pos
    if {[lindex $pos 0] eq "$::mock::state(bd).bd"} { return "file:$::mock::state(bd).bd" }
    mock::fail "get_files [lindex $pos 0]: no such file in the project"
}
proc make_wrapper {args} {
    lassign [mock::opts make_wrapper $args {-files -fileset} {-top -import -force}] opts pos
    mock::record make_wrapper {*}$args
    mock::need make_wrapper $opts {-files -top}
    if {![info exists ::mock::state(validated)]} { mock::fail "make_wrapper before validate_bd_design" }
    set ::mock::state(wrapper) "$::mock::state(bd)_wrapper"
}
proc generate_target {args} {
    mock::record generate_target {*}$args
    if {[lindex $args 0] ne "all" || ![string match file:*.bd [lindex $args 1]]} { mock::fail "generate_target $args" }
    set dir [file join $::mock::state(project_dir) $::mock::state(project).gen sources_1 bd $::mock::state(bd) hw_handoff]
    set cells {}
    foreach c [lsort [array names ::mock::cells]] { lappend cells "<MODULE INSTANCE=\"$c\" VLNV=\"[dict get $::mock::cells($c) vlnv]\"/>" }
    mock::spit [file join $dir $::mock::state(bd).hwh] "<EDKSYSTEM>[join $cells {}]</EDKSYSTEM>\n"
    set ::mock::state(generated) 1
}

# ---------------------------------------------------------------------------------------------
# Runs and reports
# ---------------------------------------------------------------------------------------------
proc get_runs {name} {
    if {$name ni {synth_1 impl_1}} { mock::fail "get_runs: no run $name" }
    return "run:$name"
}
proc mock::run_property {run name} {
    set done [expr {$run eq "synth_1" ? $::mock::state(synth) : $::mock::state(impl)}]
    switch -- $name {
        status { return [expr {$done ? ($run eq "synth_1" ? "synth_design Complete!" : "write_bitstream Complete!") : "Not started"}] }
        progress { return [expr {$done ? "100%" : "0%"}] }
        directory { return [file join $::mock::state(project_dir) $::mock::state(project).runs $run] }
        stats.wns { return $::mock::wns }
        stats.whs { return 0.010 }
        default { mock::fail "run $run has no property $name" }
    }
}
proc launch_runs {args} {
    lassign [mock::opts launch_runs $args {-jobs -to_step}] opts pos
    mock::record launch_runs {*}$args
    mock::need launch_runs $opts {-jobs}
    set jobs [dict get $opts -jobs]
    if {![string is integer -strict $jobs] || $jobs < 1} { mock::fail "launch_runs: -jobs $jobs" }
    if {$::mock::state(top) ne "$::mock::state(bd)_wrapper"} { mock::fail "launch_runs: top is $::mock::state(top), not the wrapper" }
    if {!$::mock::state(generated)} { mock::fail "launch_runs before generate_target" }
    switch -- [lindex $pos 0] {
        synth_1 { set ::mock::state(synth) 1 }
        impl_1 {
            if {!$::mock::state(synth)} { mock::fail "impl_1 before synth_1" }
            if {![dict exists $opts -to_step] || [dict get $opts -to_step] ne "write_bitstream"} { mock::fail "impl_1 must run to write_bitstream" }
            set ::mock::state(impl) 1
            mock::spit [file join [mock::run_property impl_1 directory] $::mock::state(bd)_wrapper.bit] "BIT $::mock::expect(stem)\n"
        }
        default { mock::fail "launch_runs [lindex $pos 0]" }
    }
}
proc wait_on_run {args} { mock::record wait_on_run {*}$args }
proc open_run {name} {
    if {$name ne "impl_1" || !$::mock::state(impl)} { mock::fail "open_run $name" }
    set ::mock::state(opened) 1
}
proc report_timing_summary {args} {
    lassign [mock::opts report_timing_summary $args {-file -max_paths}] opts pos
    mock::need report_timing_summary $opts {-file}
    if {!$::mock::state(opened)} { mock::fail "report before open_run" }
    mock::spit [dict get $opts -file] "timing summary WNS $::mock::wns\n"
}
proc report_utilization {args} {
    lassign [mock::opts report_utilization $args {-file -hierarchical_depth} {-hierarchical}] opts pos
    mock::need report_utilization $opts {-file}
    if {!$::mock::state(opened)} { mock::fail "report before open_run" }
    mock::spit [dict get $opts -file] "utilization\n"
}

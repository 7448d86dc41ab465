# timing/timed_calls.awk: the per-function part of a timing build (test_binaries/Makefile,
# `make timing`).  Input: gcc's assembly of a test program (NAME.c compiled exactly as in the
# other builds); -v fns="F G ...": its protected functions (the contract's protect.functions).
#
# Every `call F` / `jmp F` outside the protected functions (in main and its helpers) becomes
# `call __leakdbt_timed_F`: a rel32 branch of the same size, so only branch targets change,
# and the protected functions' own bytes stay those of the other builds (their contract's
# offsets hold, and `leakdbt harden` hardens them the same).  The thunk appended for each F
# reads the time stamp counter (lfence; rdtsc; lfence) before and after calling F and adds
# the difference to __leakdbt_fn_cycles[i] and 1 to __leakdbt_fn_calls[i], i being F's place
# in fns.  It is signature-blind: it keeps every argument register (rdtsc's rax and rdx are
# saved in r10/r11, scratch registers no C call passes values in), calls F with the stack as
# the caller left it (the return address is kept in memory, so stack arguments stay where F
# expects them), and hands back rax, rdx and the vector registers as F left them.  It is not
# reentrant (no protected function is called from a signal handler or a thread here).
#
# One more thunk, __leakdbt_timed_floor, times an empty function the same way: the cost of
# the measurement itself, which timing/harness.c reports so that the figures can be read.
# A protected function with no call to rewrite is an error (nothing would be timed).

BEGIN {
    n = split(fns, fn, " ")
    if (n == 0) { print "timed_calls.awk: -v fns=\"F ...\" names no function" > "/dev/stderr"; exit 2 }
    for (i = 1; i <= n; i++) index_of[fn[i]] = i - 1
}

# A label at the start of a line that is not local (.L...) starts a function (or an
# object, where no branch occurs).  Its part before the first dot is the function whose
# code follows: `modexp.cold` is still modexp's code.
/^[A-Za-z_][A-Za-z0-9_.]*:/ {
    current = substr($0, 1, index($0, ":") - 1)
    sub(/\..*$/, "", current)
}

($1 == "call" || $1 == "jmp") && NF == 2 {
    target = $2
    sub(/@PLT$/, "", target)
    if ((target in index_of) && !(current in index_of)) {
        sub(/[ \t]+[^ \t]+$/, "\t__leakdbt_timed_" target)
        rewritten[target]++
    }
}

{ print }

function thunk(name, target, slot) {
    print "\t.text"
    print "\t.p2align 4"
    print "\t.type\t" name ", @function"
    print name ":"
    print "\tpopq\t%r11"
    print "\tmovq\t%r11, " name "_ret(%rip)"
    print "\tmovq\t%rax, %r10"
    print "\tmovq\t%rdx, %r11"
    print "\tlfence"
    print "\trdtsc"
    print "\tlfence"
    print "\tsalq\t$32, %rdx"
    print "\torq\t%rdx, %rax"
    print "\tmovq\t%rax, " name "_t0(%rip)"
    print "\tmovq\t%r10, %rax"
    print "\tmovq\t%r11, %rdx"
    print "\tcall\t" target
    print "\tmovq\t%rax, %r10"
    print "\tmovq\t%rdx, %r11"
    print "\tlfence"
    print "\trdtsc"
    print "\tlfence"
    print "\tsalq\t$32, %rdx"
    print "\torq\t%rdx, %rax"
    print "\tsubq\t" name "_t0(%rip), %rax"
    print "\taddq\t%rax, __leakdbt_fn_cycles+" 8 * slot "(%rip)"
    print "\taddq\t$1, __leakdbt_fn_calls+" 8 * slot "(%rip)"
    print "\tmovq\t%r10, %rax"
    print "\tmovq\t%r11, %rdx"
    print "\tpushq\t" name "_ret(%rip)"
    print "\tret"
    print "\t.size\t" name ", .-" name
    print "\t.local\t" name "_ret, " name "_t0"
    print "\t.comm\t" name "_ret, 8, 8"
    print "\t.comm\t" name "_t0, 8, 8"
}

END {
    if (n == 0)
        exit 2
    for (i = 1; i <= n; i++)
        if (!(fn[i] in rewritten)) {
            print "timed_calls.awk: no call to " fn[i] " outside the protected functions" > "/dev/stderr"
            exit 1
        }
    for (i = 1; i <= n; i++)
        thunk("__leakdbt_timed_" fn[i], fn[i], i - 1)
    print "\t.text"
    print "\t.p2align 4"
    print "\t.type\t__leakdbt_empty, @function"
    print "__leakdbt_empty:"
    print "\tret"
    print "\t.size\t__leakdbt_empty, .-__leakdbt_empty"
    thunk("__leakdbt_timed_floor", "__leakdbt_empty", n)
    print "\t.globl\t__leakdbt_timed_floor"
    print "\t.section\t.rodata"
    print "\t.globl\t__leakdbt_fn_count"
    print "\t.p2align 3"
    print "__leakdbt_fn_count:"
    print "\t.quad\t" n
    print "\t.globl\t__leakdbt_fn_names"
    print "__leakdbt_fn_names:"
    for (i = 1; i <= n; i++)
        print "\t.string\t\"" fn[i] "\""
    print "\t.globl\t__leakdbt_fn_cycles"
    print "\t.globl\t__leakdbt_fn_calls"
    print "\t.comm\t__leakdbt_fn_cycles, " 8 * (n + 1) ", 8"
    print "\t.comm\t__leakdbt_fn_calls, " 8 * (n + 1) ", 8"
}

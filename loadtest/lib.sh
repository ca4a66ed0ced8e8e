# Shared by the loadtest/bench-* scripts. Sourced, not run.

# field NAME < JSON: one top-level field of the load generator's flat JSON summary.
field() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" | tr -d '"'; }

# machine: one line describing where a benchmark ran.
machine() {
    printf '%s at commit %s, %s cores, %s' "$(date -u +%Y-%m-%d)" "$(git rev-parse --short HEAD)" "$(nproc)" \
        "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
}

# write_section NAME FILE: puts FILE between <!-- NAME --> and <!-- /NAME --> in RESULTS.md,
# replacing what was there, so that each benchmark rewrites only its own section.
write_section() {
    local name=$1 file=$2 results
    results="$(dirname "${BASH_SOURCE[0]}")/RESULTS.md"
    if [ ! -f "$results" ] || ! grep -q "^<!-- $name -->" "$results"; then
        [ -f "$results" ] || printf '# Benchmark results\n\nMachines are shared and noisy: the ratio to the baseline measured in the same run is\nthe figure that counts, not the absolute numbers. Each section is rewritten by its script.\n' >"$results"
        printf '\n<!-- %s -->\n<!-- /%s -->\n' "$name" "$name" >>"$results"
    fi
    awk -v name="$name" -v file="$file" '
        $0 == "<!-- " name " -->" { print; while ((getline line < file) > 0) print line; skip = 1; next }
        $0 == "<!-- /" name " -->" { skip = 0 }
        !skip { print }
    ' "$results" >"$results.new" && mv "$results.new" "$results"
}

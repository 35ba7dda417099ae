set -u
out=/tmp/measure.txt; : > $out
m() { label=$1; dir=$2; shift 2; rm -rf /tmp/mt; s=$(date +%s.%N); (cd $dir && CARGO_TARGET_DIR=/tmp/mt cargo build --release "$@" > /tmp/m-$label.log 2>&1); e=$(date +%s.%N); n=$(grep -c "Compiling" /tmp/m-$label.log); echo "$label: $(echo "$e - $s" | bc) s, $n crates compiled" >> $out; }
m device-user-before /tmp/before -p kiln-device-user
m device-user-after /work/main -p kiln-device-user
m downstream-before /tmp/downstream-before
m downstream-after /tmp/downstream-after
echo done >> $out

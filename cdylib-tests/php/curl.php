<?php
// PHP loads every extension with RTLD_DEEPBIND: curl_* (libcurl) connects from inside that
// library; file_get_contents from PHP itself. One line per request: "<kind> ok" or "<kind> err".
$url = $argv[1];
$n = (int)$argv[2];
for ($i = 0; $i < $n; $i++) {
    $c = curl_init($url);
    curl_setopt($c, CURLOPT_RETURNTRANSFER, true);
    curl_setopt($c, CURLOPT_FORBID_REUSE, true);
    $r = curl_exec($c);
    echo "curl ", $r === false ? "err " . curl_error($c) : "ok", "\n";
    curl_close($c);
}
$r = @file_get_contents($url);
echo "file_get_contents ", $r === false ? "err" : "ok", "\n";

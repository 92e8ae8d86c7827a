<?php
// A PHP caller of poold, with php-cli and php-curl and no gRPC extension:
// it talks to poold's HTTP/JSON API (--http-api-listen). Each PHP worker
// dies after its request; the upstream connection stays warm in poold, as
// the second call's timing shows. Then a request the egress rules deny,
// with its HTTP status and ErrorInfo reason.
//
// Usage: php client.php [poold HTTP/JSON address] [upstream URL]

$api = $argv[1] ?? '127.0.0.1:8081';
$upstream = $argv[2] ?? 'http://127.0.0.1:8080/from-php';

// poold_do POSTs a DoRequest and returns [HTTP status, decoded JSON answer].
function poold_do(string $api, array $request): array
{
    $ch = curl_init("http://$api/poold.v1.HTTPService/Do");
    curl_setopt_array($ch, [
        CURLOPT_POST => true,
        CURLOPT_HTTPHEADER => ['Content-Type: application/json'],
        CURLOPT_POSTFIELDS => json_encode($request),
        CURLOPT_RETURNTRANSFER => true,
        CURLOPT_TIMEOUT => 10,
    ]);
    $raw = curl_exec($ch);
    if ($raw === false) {
        fwrite(STDERR, 'poold unreachable: ' . curl_error($ch) . "\n");
        exit(1);
    }
    $status = curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
    curl_close($ch);
    return [$status, json_decode($raw, true)];
}

// reason returns the ErrorInfo reason of a Connect error answer.
function reason(array $error): string
{
    foreach ($error['details'] ?? [] as $detail) {
        if (($detail['type'] ?? '') === 'google.rpc.ErrorInfo') {
            return $detail['debug']['reason'] ?? '';
        }
    }
    return '';
}

foreach ([1, 2] as $attempt) {
    [$status, $resp] = poold_do($api, [
        'method' => 'POST',
        'url' => $upstream,
        // bytes fields are base64 in JSON
        'body' => base64_encode('hello from php'),
    ]);
    $body = base64_decode($resp['body'] ?? '');
    $timing = $resp['timing'] ?? [];
    $reused = !empty($timing['reused']) ? 'true' : 'false';
    printf("Do %d: HTTP %d, upstream %d, connection %s reused=%s total=%s\n",
        $attempt, $status, $resp['statusCode'] ?? 0, $timing['connectionId'] ?? '?', $reused, $timing['total'] ?? '?');
    if ($status !== 200 || ($resp['statusCode'] ?? 0) !== 200 || strpos($body, 'hello from php') === false) {
        fwrite(STDERR, "unexpected answer: " . json_encode($resp) . "\n");
        exit(1);
    }
    if ($attempt === 2 && $reused !== 'true') {
        fwrite(STDERR, "the second request did not reuse the pooled connection\n");
        exit(1);
    }
}

[$status, $error] = poold_do($api, ['url' => 'http://169.254.169.254/latest/meta-data/']);
printf("denied: HTTP %d %s: %s\n", $status, reason($error), $error['message'] ?? '');
if ($status !== 403 || reason($error) !== 'EGRESS_DENIED') {
    fwrite(STDERR, "the metadata address was not denied as documented\n");
    exit(1);
}

# rpc.awk: answer one JSON-RPC 2.0 request line of tarea's protocol (docs/protocol.md).
# POSIX awk only (mawk, gawk or busybox awk). Called by tasks.sh once per line.
#
# The function: contar_palabras(texto: string) -> {"palabras": int, "lineas": int}
# Words are runs of characters between spaces, tabs and line breaks; lineas counts
# line breaks (like wc -l). rpc.discover answers the OpenRPC document below.

function fail(id, code, msg, data) {
    answer("{\"jsonrpc\":\"2.0\",\"id\":" id ",\"error\":{\"code\":" code ",\"message\":\"" msg "\"" \
        (data == "" ? "" : ",\"data\":" data) "}}")
    exit 0
}
function out(line) { printf "%s\n", line; fflush() }
# An answer. When tarea asked for log marks (mark=true), a mark goes first on stderr,
# announced by a "logged" notification (docs/protocol.md).
function answer(line) {
    if (mark == "true") {
        printf "\033]tarea-log-mark\007" > "/dev/stderr"; fflush("/dev/stderr")
        out("{\"jsonrpc\":\"2.0\",\"method\":\"logged\",\"params\":{}}")
    }
    out(line)
}
function ws() { while (P <= N && index(" \t\r\n", substr(S, P, 1)) > 0) P++ }

# Each parse_* reads the value at P, leaves P after it, and returns its raw text;
# BAD is set on a syntax error. Objects record their keys' raw values in V[path]
# and their JSON types in T[path], and the keys of each object in K[path].
function parse_value(path, depth,    c) {
    ws(); c = substr(S, P, 1)
    if (depth > 64) { BAD = 1; return "" }
    if (c == "\"") { T[path] = "string"; return parse_string() }
    if (c == "{") { T[path] = "object"; return parse_object(path, depth) }
    if (c == "[") { T[path] = "array"; return parse_array(path, depth) }
    if (match(substr(S, P, 32), /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?/)) {
        T[path] = "number"; P += RLENGTH; return substr(S, P - RLENGTH, RLENGTH)
    }
    if (substr(S, P, 4) == "true" || substr(S, P, 4) == "null") {
        T[path] = (c == "t") ? "boolean" : "null"; P += 4; return substr(S, P - 4, 4)
    }
    if (substr(S, P, 5) == "false") { T[path] = "boolean"; P += 5; return "false" }
    BAD = 1; return ""
}
function parse_string(    start, rest) {
    start = P; P++
    while (P <= N) {
        rest = substr(S, P)
        if (!match(rest, /["\\]/)) break
        P += RSTART - 1
        if (substr(S, P, 1) == "\"") { P++; return substr(S, start, P - start) }
        P += 2
    }
    BAD = 1; return ""
}
function parse_object(path, depth,    start, key, c) {
    start = P; P++; ws()
    if (substr(S, P, 1) == "}") { P++; return "{}" }
    while (!BAD) {
        ws(); if (substr(S, P, 1) != "\"") { BAD = 1; break }
        key = parse_string(); ws()
        if (substr(S, P, 1) != ":") { BAD = 1; break }
        P++
        K[path] = K[path] SUBSEP key
        V[path "/" key] = parse_value(path "/" key, depth + 1); ws()
        c = substr(S, P, 1); P++
        if (c == "}") return substr(S, start, P - start)
        if (c != ",") BAD = 1
    }
    return ""
}
function parse_array(path, depth,    start, c) {
    start = P; P++; ws()
    if (substr(S, P, 1) == "]") { P++; return "[]" }
    while (!BAD) {
        parse_value(path "/[]", depth + 1); ws()
        c = substr(S, P, 1); P++
        if (c == "]") return substr(S, start, P - start)
        if (c != ",") BAD = 1
    }
    return ""
}
# The text of a raw JSON string, enough to count words: escapes that are white
# space become white space, any other escaped character one letter.
function words_text(raw,    t) {
    t = substr(raw, 2, length(raw) - 2)
    gsub(/\\\\/, "x", t)
    gsub(/\\n/, "\n", t)
    gsub(/\\[tr]/, " ", t)
    gsub(/\\u00(20|09|0[aA]|0[dD])/, " ", t)
    gsub(/\\u[0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F]/, "x", t)
    gsub(/\\./, "x", t)
    return t
}

BEGIN {
    DOC = "{\"openrpc\":\"1.3.2\",\"info\":{\"title\":\"{{name}}\",\"version\":\"1\"}," \
          "\"methods\":[{\"name\":\"contar_palabras\",\"paramStructure\":\"by-name\"," \
          "\"summary\":\"Count the words and lines of a text.\"," \
          "\"params\":[{\"name\":\"texto\",\"required\":true,\"schema\":{\"type\":\"string\"}}]," \
          "\"result\":{\"name\":\"result\",\"schema\":{\"type\":\"object\",\"properties\":" \
          "{\"palabras\":{\"type\":\"integer\"},\"lineas\":{\"type\":\"integer\"}}}}}]}"
}
{
    S = $0; N = length(S); P = 1; BAD = 0
    ws(); first = substr(S, P, 1)
    parse_value("", 0); ws()
    if (BAD || P <= N) fail("null", -32700, "Parse error")
    if (first == "[") fail("null", -32600, "Invalid Request: batches are not supported")
    if (first != "{") fail("null", -32600, "Invalid Request: expected a JSON object")
    if (!(("/\"id\"") in V)) exit 0                     # a notification: never answered
    id = V["/\"id\""]; idt = T["/\"id\""]
    if (idt != "string" && idt != "number" && idt != "null") fail("null", -32600, "Invalid Request: bad id")
    if (V["/\"jsonrpc\""] != "\"2.0\"") fail(id, -32600, "Invalid Request: jsonrpc must be 2.0")
    if (T["/\"method\""] != "string") fail(id, -32600, "Invalid Request: method must be a string")
    method = V["/\"method\""]
    pt = ("/\"params\"" in T) ? T["/\"params\""] : "object"
    if (pt == "array") fail(id, -32602, "Invalid params: pass parameters by name", "{\"param\":null,\"reason\":\"params must be an object\"}")
    if (pt != "object") fail(id, -32600, "Invalid Request: params must be an object")
    if (method == "\"rpc.discover\"") { answer("{\"jsonrpc\":\"2.0\",\"id\":" id ",\"result\":" DOC "}"); exit 0 }
    if (method != "\"contar_palabras\"")
        fail(id, -32601, "Unknown function", "{\"function\":" method "}")
    nkeys = split(K["/\"params\""], keys, SUBSEP)
    for (i = 2; i <= nkeys; i++)
        if (keys[i] != "\"texto\"")
            fail(id, -32602, "Invalid params: unknown parameter", "{\"param\":" keys[i] ",\"reason\":\"unknown parameter\"}")
    path = "/\"params\"/\"texto\""
    if (!(path in T)) fail(id, -32602, "Invalid params: missing required parameter texto", "{\"param\":\"texto\",\"reason\":\"missing required parameter\"}")
    if (T[path] != "string") fail(id, -32602, "Invalid params: texto must be a string", "{\"param\":\"texto\",\"reason\":\"expected string, got " T[path] "\"}")
    text = words_text(V[path])
    out("{\"jsonrpc\":\"2.0\",\"method\":\"progress\",\"params\":{\"id\":" id ",\"progress\":0.5,\"message\":\"texto leido\"}}")
    lines = gsub(/\n/, "\n", text)
    words = split(text, w)
    out("{\"jsonrpc\":\"2.0\",\"method\":\"progress\",\"params\":{\"id\":" id ",\"progress\":1}}")
    answer("{\"jsonrpc\":\"2.0\",\"id\":" id ",\"result\":{\"palabras\":" words ",\"lineas\":" lines "}}")
}

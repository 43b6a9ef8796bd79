# How services.larder turns its options into larder's config file and systemd
# credentials. Builtins only, no nixpkgs: CI evaluates this file with a plain
# `nix-instantiate --eval` and feeds the result to `larder check-config`
# (tests/nix_files.rs), so the keys the module writes are the keys the binary
# accepts.
let
  # Secret options that are single files: option name -> where the credential name
  # goes in the config, and the credential name itself.
  fileSecrets = {
    adminTokenFile = {
      path = [ "admin_token_file" ];
      credential = "admin-token";
    };
    tlsKeyFile = {
      path = [ "tls" "key_file" ];
      credential = "tls-key";
    };
    acmeEabKidFile = {
      path = [ "tls" "acme" "eab_kid_file" ];
      credential = "acme-eab-kid";
    };
    acmeEabHmacFile = {
      path = [ "tls" "acme" "eab_hmac_file" ];
      credential = "acme-eab-hmac";
    };
  };

  # Set `value` at `path` (a list of names) inside `attrs`, keeping what is there.
  setAt = attrs: path: value:
    let
      name = builtins.head path;
      rest = builtins.tail path;
    in
    attrs // {
      ${name} =
        if rest == [ ]
        then value
        else setAt (attrs.${name} or { }) rest value;
    };

  # Entries of a `[[table]]` list by `name`: `extra.<name>` is merged into the
  # entry of that name, or added as a new entry when there is none.
  mergeByName = entries: extra:
    let
      named = map (e: e.name) entries;
      merged = map (e: e // (extra.${e.name} or { })) entries;
      added = map (n: { name = n; } // extra.${n})
        (builtins.filter (n: !(builtins.elem n named)) (builtins.attrNames extra));
    in
    merged ++ added;
  # Every key of larder's config file, by table: "" is the top level, "tls.acme"
  # the `[tls.acme]` table, "caches[]" an entry of `[[caches]]`. tests/nix_files.rs
  # checks this against the structs larder deserializes the file into.
  tables = {
    "" = [
      "listen"
      "data_dir"
      "public_url"
      "zstd_level"
      "max_nar_bytes"
      "max_small_body"
      "staged_ttl_secs"
      "s3_listen"
      "metrics_listen"
      "s3_region"
      "s3_host"
      "trusted_upload_keys"
      "allowed_hosts"
      "allowed-hosts"
      "tls"
      "admin_token_file"
      "caches"
      "tokens"
      "s3_keys"
      "s3_buckets"
      "gc"
      "log"
      "metrics"
      "upstreams"
    ];
    log = [ "format" "access" ];
    upstreams = [ "timeout" "negative_ttl" "max_concurrent_fetches" ];
    gc = [ "interval" "default_retention" "max_size" "low_water" "compact_below" ];
    tls = [ "listen" "cert_file" "key_file" "redirect_exempt_paths" "redirect_exempt_cidrs" "acme" ];
    "tls.acme" = [
      "domains"
      "directory"
      "directory_ca_file"
      "challenge"
      "contact"
      "eab_kid_file"
      "eab_hmac_file"
      "retry_initial_secs"
      "retry_max_secs"
    ];
    "caches[]" = [
      "name"
      "public"
      "priority"
      "store_dir"
      "upstream_cache_key_names"
      "retention_period"
      "signing_key_file"
      "upstreams"
    ];
    "caches[].upstreams[]" = [ "url" "public_keys" "priority" ];
    "tokens[]" = [
      "sub"
      "validity"
      "file"
      "pull"
      "push"
      "delete"
      "create_cache"
      "configure_cache"
      "configure_cache_retention"
      "destroy_cache"
      "metrics"
    ];
    "s3_keys[]" = [ "name" "access_key_id_file" "secret_access_key_file" "buckets" ];
    "s3_keys[].buckets[]" = [ "pattern" "read" "write" "owner" ];
    "s3_buckets[]" = [ "name" ];
  };

  # The keys of `settings` (a config file as an attribute set) that larder does
  # not know, as `tls.acme.domain` or `caches[0].nmae`.
  unknownKeys = settings:
    let
      check = table: prefix: attrs:
        let
          known = tables.${table};
          child = k: if table == "" then k else "${table}.${k}";
          entries = k: v:
            if builtins.isAttrs v && tables ? ${child k}
            then check (child k) "${prefix}${k}." v
            else if builtins.isList v && tables ? "${child k}[]"
            then
              builtins.concatLists
                (builtins.genList
                  (i:
                    let e = builtins.elemAt v i; in
                    if builtins.isAttrs e
                    then check "${child k}[]" "${prefix}${k}[${toString i}]." e
                    else [ ])
                  (builtins.length v))
            else [ ];
        in
        builtins.concatMap
          (k: if builtins.elem k known then entries k attrs.${k} else [ "${prefix}${k}" ])
          (builtins.attrNames attrs);
    in
    check "" "" settings;

  # The settings that name a secret file, as `optionKeys` spells them.
  secretKeys = [
    "admin_token_file"
    "tls.key_file"
    "tls.acme.eab_kid_file"
    "tls.acme.eab_hmac_file"
    "caches[].signing_key_file"
    "s3_keys[].access_key_id_file"
    "s3_keys[].secret_access_key_file"
  ];

  # The values of a `secretKeys` key in `settings`: (`caches[]` gives one per entry)
  # as { key = "caches[1].signing_key_file"; value = ...; }.
  valuesAt = settings: key:
    let
      go = prefix: v: parts:
        if parts == [ ] then [{ key = prefix; value = v; }]
        else
          let
            part = builtins.head parts;
            rest = builtins.tail parts;
            list = builtins.match "(.*)\\[]" part;
            sep = if prefix == "" then "" else ".";
          in
          if list != null then
            let
              name = builtins.head list;
              entries = if builtins.isAttrs v then v.${name} or [ ] else [ ];
            in
            builtins.concatLists (builtins.genList
              (i: go "${prefix}${sep}${name}[${toString i}]" (builtins.elemAt entries i) rest)
              (if builtins.isList entries then builtins.length entries else 0))
          else if builtins.isAttrs v && v ? ${part}
          then go "${prefix}${sep}${part}" v.${part} rest
          else [ ];
    in
    go "" settings (builtins.filter builtins.isString (builtins.split "\\." key));
  # The upstream of `nixosProxy`: cache.nixos.org and its key.
  nixosUpstream = {
    url = "https://cache.nixos.org";
    public_keys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
    priority = 40;
  };
in
{
  inherit tables unknownKeys secretKeys valuesAt nixosUpstream;

  # Option names of services.larder and the config keys they set. `settings`
  # itself is larder's config file (RFC 42): its typed options are these keys.
  optionKeys = {
    settings = {
      listen = "listen";
      data_dir = "data_dir";
      s3_listen = "s3_listen";
    };
    adminTokenFile = "admin_token_file";
    tlsKeyFile = "tls.key_file";
    acmeEabKidFile = "tls.acme.eab_kid_file";
    acmeEabHmacFile = "tls.acme.eab_hmac_file";
    signingKeyFiles = "caches[].signing_key_file";
    s3KeyFiles = {
      accessKeyIdFile = "s3_keys[].access_key_id_file";
      secretAccessKeyFile = "s3_keys[].secret_access_key_file";
    };
  };

  # The config file (`settings`) and the `LoadCredential=` entries for the
  # secrets. Each secret reaches larder as a credential; the config names it by
  # its credential name, never by its path.
  render =
    { settings
    , adminTokenFile ? null
    , tlsKeyFile ? null
    , acmeEabKidFile ? null
    , acmeEabHmacFile ? null
    , signingKeyFiles ? { }
    , s3KeyFiles ? { }
      # A cache of this name becomes a public pull-through cache of
      # cache.nixos.org (its `public` and `upstreams`, over `settings`).
    , nixosProxy ? null
    }:
    let
      given = {
        inherit adminTokenFile tlsKeyFile acmeEabKidFile acmeEabHmacFile;
      };
      singles = builtins.filter (n: given.${n} != null) (builtins.attrNames fileSecrets);
      withSingles = builtins.foldl'
        (acc: n: setAt acc fileSecrets.${n}.path fileSecrets.${n}.credential)
        settings
        singles;
      signingCredential = cache: "signing-key-${cache}";
      idCredential = key: "s3-${key}-access-key-id";
      secretCredential = key: "s3-${key}-secret-access-key";
      proxied =
        if nixosProxy == null then { }
        else { ${nixosProxy} = { public = true; upstreams = [ nixosUpstream ]; }; };
      caches = mergeByName
        (mergeByName (settings.caches or [ ])
          (builtins.mapAttrs (cache: _: { signing_key_file = signingCredential cache; }) signingKeyFiles))
        proxied;
      s3Keys = mergeByName (settings.s3_keys or [ ])
        (builtins.mapAttrs
          (key: _: {
            access_key_id_file = idCredential key;
            secret_access_key_file = secretCredential key;
          })
          s3KeyFiles);
    in
    {
      settings = withSingles
        // (if caches == [ ] then { } else { inherit caches; })
        // (if s3Keys == [ ] then { } else { s3_keys = s3Keys; });
      credentials =
        map (n: "${fileSecrets.${n}.credential}:${given.${n}}") singles
        ++ map (cache: "${signingCredential cache}:${signingKeyFiles.${cache}}")
          (builtins.attrNames signingKeyFiles)
        ++ builtins.concatMap
          (key: [
            "${idCredential key}:${s3KeyFiles.${key}.accessKeyIdFile}"
            "${secretCredential key}:${s3KeyFiles.${key}.secretAccessKeyFile}"
          ])
          (builtins.attrNames s3KeyFiles);
    };
}

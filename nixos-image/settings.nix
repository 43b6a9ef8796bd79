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
in
{
  # Option names of services.larder and the config keys they set. `settings`
  # itself is larder's config file (RFC 42): its typed options are these keys.
  optionKeys = {
    settings = {
      listen = "listen";
      data_dir = "data_dir";
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
      caches = mergeByName (settings.caches or [ ])
        (builtins.mapAttrs (cache: _: { signing_key_file = signingCredential cache; }) signingKeyFiles);
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

# larder, built from this checkout with the pinned Cargo.lock.
{ lib, rustPlatform }:
let
  manifest = (lib.importTOML ../Cargo.toml).package;
in
rustPlatform.buildRustPackage {
  pname = manifest.name;
  inherit (manifest) version;

  src = lib.fileset.toSource {
    root = ../.;
    # Cargo.toml names tests/tests.rs as a target, so tests/ must be there.
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      ../tests
      (lib.fileset.maybeMissing ../bench)
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  # The integration tests need root, network namespaces and a real Nix client;
  # tests/run.sh runs them in CI. A sandboxed build cannot.
  doCheck = false;

  meta = {
    inherit (manifest) description;
    license = [ lib.licenses.mit lib.licenses.asl20 ];
    mainProgram = "larder";
    platforms = lib.platforms.linux;
  };
}

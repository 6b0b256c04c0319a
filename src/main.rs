fn main() {
    print!("{}", dynamics_operator::resource::crd_yaml());
}
